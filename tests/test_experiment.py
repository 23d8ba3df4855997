"""One failing run does not stop the others; MLflow holds one run per config."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, support_dataset


def _config(model_dir, model_kwargs=None, **train):
    args = dict(
        learning_rate=1e-3, max_steps=4, per_device_train_batch_size=2, logging_steps=1, max_length=64
    )
    args.update(train)
    return RFModelConfig(
        model_name=model_dir,
        model_kwargs=model_kwargs or {},
        peft_config=RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        training_args=RFSFTConfig(**args),
        formatting_func=formatting_function,
    )


def test_create_model_and_training_errors_fail_only_their_run(tmp_path, tiny_model_dir, create_tiny_model):
    def create_model(model_config):
        kwargs = dict(model_config["model_kwargs"])
        if kwargs.pop("broken_loader", False):
            raise OSError("cannot load weights for broken model")
        fail_at = kwargs.pop("fail_at_call", None)
        model, tokenizer = create_tiny_model(
            {"model_name": model_config["model_name"], "model_kwargs": kwargs}
        )
        if fail_at is not None:
            calls = {"n": 0}

            def explode(module, inputs):
                calls["n"] += 1
                if calls["n"] >= fail_at:
                    raise RuntimeError("simulated CUDA error in forward")

            model.register_forward_pre_hook(explode)
        return model, tokenizer

    configs = List(
        [
            _config(tiny_model_dir),
            _config(tiny_model_dir, {"broken_loader": True}),
            _config(tiny_model_dir, {"fail_at_call": 3}),
            _config(tiny_model_dir, learning_rate=1e-4),
        ]
    )
    exp = Experiment("failures", experiment_path=tmp_path, verbose=False)
    exp.run_fit(RFGridSearch(configs, trainer_type="SFT"), create_model, support_dataset(n=16), num_chunks=4)
    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].tolist() == ["COMPLETED", "FAILED", "FAILED", "COMPLETED"]
    assert "OSError: cannot load weights for broken model" in info["error"].iloc[1]
    assert "RuntimeError: simulated CUDA error in forward" in info["error"].iloc[2]
    results = exp.get_results()
    # the run that failed mid-training logged its first steps; the healthy runs trained fully
    assert results.groupby("run_id")["step"].max().to_dict() == {1: 4, 3: 2, 4: 4}
    exp.end()


def test_mlflow_holds_one_run_per_config_with_params_and_metrics(tmp_path, tiny_model_dir, create_tiny_model):
    configs = List([_config(tiny_model_dir, learning_rate=List([1e-3, 1e-4]))])
    exp = Experiment("tracked", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(configs, trainer_type="SFT"),
        create_tiny_model,
        support_dataset(n=8),
        support_dataset(n=4, seed=9),
        num_chunks=2,
    )
    client = MlflowClient(tracking_uri=exp.tracking_uri)
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    assert sorted(float(r.data.params["train.learning_rate"]) for r in runs) == [1e-4, 1e-3]
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("loss", "learning_rate", "grad_norm", "eval_loss", "chunk"):
            assert key in run.data.metrics, key
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
    exp.end()


def test_bad_dataset_is_rejected_before_training(tmp_path, tiny_model_dir, create_tiny_model):
    exp = Experiment("bad-input", experiment_path=tmp_path, verbose=False)
    config = _config(tiny_model_dir)
    config.formatting_func = None  # raw rows have instruction/response, not SFT columns
    with pytest.raises(ValueError, match=r"SFT training needs columns"):
        exp.run_fit(RFGridSearch(config, trainer_type="SFT"), create_tiny_model, support_dataset(n=8))
    with pytest.raises(ValueError, match="train_dataset is empty"):
        exp.run_fit(RFGridSearch(_config(tiny_model_dir), trainer_type="SFT"), create_tiny_model, [])
    assert exp.get_runs_info().empty  # nothing was registered, nothing trained
    exp.end()


def test_progress_and_mlflow_hint_are_printed(tmp_path, tiny_model_dir, create_tiny_model, capsys):
    exp = Experiment("shown", experiment_path=tmp_path, verbose=True)
    exp.run_fit(
        RFGridSearch(_config(tiny_model_dir), trainer_type="SFT"),
        create_tiny_model,
        support_dataset(n=8),
        num_chunks=2,
    )
    out = capsys.readouterr().out
    # one line per (chunk, run) turn with the step and the latest loss, then the store's location
    assert "[epoch 1 chunk 1/2] run 1" in out and "[epoch 1 chunk 2/2] run 1" in out
    assert "step 2/4 loss=" in out and "-> COMPLETED" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{exp.path / 'mlflow.db'}" in out
    exp.end()


def test_interrupted_run_fit_stops_unfinished_runs_and_ends_their_threads(
    tmp_path, tiny_model_dir, create_tiny_model, monkeypatch
):
    import threading

    def interrupt_after_first_turn(controller):
        raise KeyboardInterrupt  # as if the user pressed stop in the notebook

    configs = List([_config(tiny_model_dir, learning_rate=List([1e-3, 1e-4]))])
    exp = Experiment("interrupted", experiment_path=tmp_path, verbose=False)
    exp.controller.hooks.between_turns.append(interrupt_after_first_turn)
    with pytest.raises(KeyboardInterrupt):
        exp.run_fit(
            RFGridSearch(configs, trainer_type="SFT"),
            create_tiny_model,
            support_dataset(n=8),
            num_chunks=2,
            execution="sliced",  # one run per turn (a fused cohort's turn trains both)
        )
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["STOPPED", "STOPPED"]
    assert info["global_step"].tolist() == [2, 0]  # run 1 trained its first chunk, run 2 never started
    assert not [t for t in threading.enumerate() if t.name.startswith("rapidfire-run-")]
    statuses = {
        r.info.status for r in MlflowClient(exp.tracking_uri).search_runs([exp._get_tracker().experiment_id])
    }
    assert statuses == {"KILLED"}
    exp.end()


def test_runs_left_in_flight_by_a_crashed_process_are_stopped_on_reopen(tmp_path):
    import subprocess
    import sys
    import textwrap

    # A separate process registers a run, starts it, and dies without cleaning up.
    script = textwrap.dedent(
        f"""
        import os
        from rapidfire_core.control import RunStatus, RunStore
        store = RunStore({str(tmp_path / "crashed" / "runs.db")!r})
        done = store.create_run("a", "SFT", {{}})
        store.update_run(done, status=RunStatus.ONGOING)
        store.update_run(done, status=RunStatus.COMPLETED)
        live = store.create_run("b", "SFT", {{}})
        store.update_run(live, status=RunStatus.ONGOING)
        os._exit(9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path))
    assert proc.returncode == 9
    exp = Experiment("crashed", experiment_path=tmp_path, verbose=False)
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED", "STOPPED"]
    assert info["error"].tolist()[1] == "the process ended while the run was in flight"
    exp.end()


def test_mlflow_write_failures_do_not_stop_training(
    tmp_path, tiny_model_dir, create_tiny_model, monkeypatch, caplog
):
    real_log_batch = MlflowClient.log_batch

    def flaky_log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        if metrics:  # params/tags at run start still work; every metric write fails
            raise ConnectionError("tracking server went away")
        return real_log_batch(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky_log_batch)
    exp = Experiment("flaky-tracking", experiment_path=tmp_path, verbose=False)
    with caplog.at_level("WARNING", logger="rapidfire_core.tracking.mlflow_tracker"):
        exp.run_fit(
            RFGridSearch(_config(tiny_model_dir), trainer_type="SFT"), create_tiny_model, support_dataset(n=8)
        )
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED"]
    assert exp.get_results()["loss"].notna().sum() == 4  # the run store still has every step
    assert "tracking server went away" in caplog.text
    exp.end()


def test_an_error_saving_one_runs_adapter_fails_only_that_run(
    tmp_path, tiny_model_dir, create_tiny_model, monkeypatch
):
    import rapidfire_core.scheduler.local_executor as executor_module

    real_save = executor_module.save_adapter

    def save_or_fail(model, adapter_name, out_dir):
        if adapter_name == "run_1":
            raise OSError(28, "No space left on device")
        real_save(model, adapter_name, out_dir)

    monkeypatch.setattr(executor_module, "save_adapter", save_or_fail)
    configs = List([_config(tiny_model_dir, learning_rate=List([1e-3, 1e-4]))])
    exp = Experiment("disk-full", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(configs, trainer_type="SFT"), create_tiny_model, support_dataset(n=8), num_chunks=2
    )
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["FAILED", "COMPLETED"]
    assert "No space left on device" in info["error"].iloc[0]
    statuses = [
        r.info.status for r in MlflowClient(exp.tracking_uri).search_runs([exp._get_tracker().experiment_id])
    ]
    assert sorted(statuses) == ["FAILED", "FINISHED"]
    exp.end()


def test_inputs_the_engine_cannot_honour_are_rejected_before_training(
    tmp_path, tiny_model_dir, create_tiny_model
):
    from rapidfire_core.errors import ConfigError

    exp = Experiment("rejected", experiment_path=tmp_path, verbose=False)
    with pytest.raises(ConfigError, match=r"packing=True is not supported"):
        exp.run_fit(
            RFGridSearch(_config(tiny_model_dir, packing=True), trainer_type="SFT"),
            create_tiny_model,
            support_dataset(8),
        )
    text_config = _config(tiny_model_dir)
    text_config.formatting_func = lambda row: {"text": row["instruction"] + " " + row["response"]}
    text_config.compute_metrics = lambda preds: {"n": len(preds[0])}
    with pytest.raises(
        ValueError, match=r"compute_metrics generates a completion for each eval row's 'prompt'"
    ):
        exp.run_fit(
            RFGridSearch(text_config, trainer_type="SFT"),
            create_tiny_model,
            support_dataset(8),
            support_dataset(4),
        )
    assert exp.get_runs_info().empty
    exp.end()


def test_opening_an_experiment_another_live_process_trains_leaves_its_runs_alone(tmp_path):
    from rapidfire_core.control import CommandStore, RunStatus, RunStore
    from rapidfire_core.control.owner_lease import OwnerLease

    db = tmp_path / "live" / "runs.db"
    store = RunStore(db)
    run = store.create_run("a", "SFT", {})
    store.update_run(run, status=RunStatus.ONGOING)
    beat = OwnerLease(CommandStore(db))  # as the training process's controller keeps it
    beat.acquire()
    try:
        reader = Experiment("live", experiment_path=tmp_path, verbose=False)
        assert reader.get_runs_info()["status"].tolist() == ["ONGOING"]
        reader.end()
    finally:
        beat.release()
    reopened = Experiment("live", experiment_path=tmp_path, verbose=False)  # the trainer is gone now
    assert reopened.get_runs_info()["status"].tolist() == ["STOPPED"]
    reopened.end()


def test_mlflow_runs_left_running_by_a_dead_process_end_killed_on_reopen(tmp_path):
    from rapidfire_core.control import RunStatus, RunStore
    from rapidfire_core.tracking.mlflow_tracker import MLflowTracker, default_tracking_uri

    path = tmp_path / "dead"
    store = RunStore(path / "runs.db")
    tracker = MLflowTracker("dead", default_tracking_uri(path))
    run = store.create_run("a", "SFT", {})
    mlflow_id = tracker.start_run("run-1", {"train.learning_rate": 1e-3})
    store.update_run(run, status=RunStatus.ONGOING, mlflow_run_id=mlflow_id)
    tracker.close()  # the process "dies" here: runs.db says ONGOING, MLflow says RUNNING
    assert MlflowClient(default_tracking_uri(path)).get_run(mlflow_id).info.status == "RUNNING"
    exp = Experiment("dead", experiment_path=tmp_path, verbose=False)
    assert exp.get_runs_info()["status"].tolist() == ["STOPPED"]
    assert MlflowClient(exp.tracking_uri).get_run(mlflow_id).info.status == "KILLED"
    exp.end()


def test_cancel_current_stops_the_fit_in_flight(tmp_path, tiny_model_dir, create_tiny_model, capsys):
    from rapidfire_core.scheduler.controller import FitCancelled

    exp = Experiment("cancel-current", experiment_path=tmp_path)
    exp.cancel_current()  # nothing in flight: says so
    assert "No fit is in flight: nothing to cancel" in capsys.readouterr().out
    handle = exp.run_fit(
        RFGridSearch(_config(tiny_model_dir, max_steps=400), trainer_type="SFT"),
        create_tiny_model,
        support_dataset(n=8),
        background=True,
    )
    deadline = time.monotonic() + 60
    while exp.get_results().empty and time.monotonic() < deadline:  # it has trained a step
        time.sleep(0.05)
    exp.cancel_current()
    assert handle.done  # cancel_current waited for the fit to unwind
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["STOPPED"] and 0 < info["global_step"][0] < 400
    with pytest.raises(FitCancelled):
        handle.wait()
    exp.end()


def test_an_experiment_without_mlflow_trains_and_says_where_it_tracked(
    tmp_path, tiny_model_dir, create_tiny_model
):
    exp = Experiment("untracked", experiment_path=tmp_path, verbose=False, trackers=[])
    exp.run_fit(
        RFGridSearch(_config(tiny_model_dir, max_steps=2), trainer_type="SFT"),
        create_tiny_model,
        support_dataset(n=4),
    )
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED"]
    assert exp.experiment_id is None and not (exp.path / "mlflow.db").exists()
    assert "run-1 step 2: loss=" in exp.get_log_file_path("training").read_text()
    exp.end()


def _finished_experiment(root):
    """An experiment on disk with one COMPLETED run, as a past run_fit leaves it."""
    from rapidfire_core.control import CommandStore, RunStatus, RunStore

    store = RunStore(root / "done" / "runs.db")
    run = store.create_run("run-1", "SFT", {"train.learning_rate": 1e-3})
    store.update_run(run, status=RunStatus.ONGOING)
    store.update_run(run, status=RunStatus.COMPLETED, chunks_done=2, global_step=4)
    store.close()
    CommandStore(root / "done" / "runs.db").close()
    return root / "done"


def test_opening_an_experiment_to_read_takes_no_lease_and_writes_no_log(tmp_path, monkeypatch):
    from rapidfire_core.control import CommandStore

    path = _finished_experiment(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a reader took the owner lease")

    monkeypatch.setattr(CommandStore, "take_lease", refuse)  # a trainer starting now is never refused
    reader = Experiment("done", experiment_path=tmp_path, verbose=False)
    assert reader.get_runs_info()["status"].tolist() == ["COMPLETED"]
    reader.end()
    assert not (path / "logs").exists()  # nothing appended to the experiment's logs


@contextlib.contextmanager
def _read_only(path):
    """`path` as read-only storage for this process (yields its path then, None if this process
    cannot make one): chmod for a user, a read-only bind mount for root (chmod does not stop root)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p, mode in modes.items():
            p.chmod(mode & ~0o222)
        try:
            yield path
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    target = path.parent / "read-only"
    target.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(path.parent), str(target)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        yield None  # root without the right to mount
        return
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True, capture_output=True)
        yield target / path.name
    finally:
        subprocess.run(["umount", str(target)], check=True, capture_output=True)


def test_an_experiment_on_read_only_storage_opens_for_reading(tmp_path):
    path = _finished_experiment(tmp_path / "root")
    with _read_only(path) as ro_path:
        if ro_path is None:
            pytest.skip("running as root without the right to mount: no read-only storage to test on")
        exp = Experiment(ro_path.name, experiment_path=ro_path.parent, verbose=False)
        info = exp.get_runs_info()
        assert info["status"].tolist() == ["COMPLETED"] and info["global_step"].tolist() == [4]
        assert exp.get_commands().empty
        exp.end()
    assert sorted(p.name for p in path.iterdir()) == ["runs.db"]
