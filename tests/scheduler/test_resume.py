"""What run_fit does with an experiment that holds runs: config fingerprints, continuing a
sweep, an explicit new sweep, a clear error otherwise; a second trainer refused."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rapidfire_core import Experiment
from rapidfire_core.automl import RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.control.owner_lease import ExperimentBusy
from rapidfire_core.demo.data import formatting_function, support_dataset
from rapidfire_core.scheduler.resume import ResumeMismatch, describe, run_fingerprint
from tests.scheduler import crash_sweep


def _group(model_dir, lr=1e-3, func=formatting_function):
    config = RFModelConfig(
        model_name=model_dir,
        peft_config=RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        training_args=RFSFTConfig(learning_rate=lr, max_steps=2, per_device_train_batch_size=2, logging_steps=1,
                                  max_length=64),
        formatting_func=func,
    )  # fmt: skip
    return RFGridSearch(config, trainer_type="SFT")


def _other_format(row):  # same name, another body: another config
    return {"prompt": row["instruction"].upper(), "completion": row["response"]}


_other_format.__qualname__ = formatting_function.__qualname__


class _Data:  # what run_fingerprint reads of a FitData
    def __init__(self, rows):
        from rapidfire_core.scheduler.chunks import ChunkPlan

        self.trainer_type, self.train, self.evals = "SFT", rows, None
        self.plan = ChunkPlan(len(rows), 2, 42)


def test_fingerprints_follow_knobs_functions_and_data_not_object_identity(tiny_model_dir):
    rows = support_dataset(n=8)
    (spec,) = _group(tiny_model_dir).expand()
    (again,) = _group(tiny_model_dir).expand()  # a new object tree, as after a restart
    fingerprint = run_fingerprint(spec, _Data(rows))
    assert run_fingerprint(again, _Data(rows)) == fingerprint
    assert " at 0x" not in repr(describe(spec.model_config))  # no object addresses
    (lr,) = _group(tiny_model_dir, lr=2e-3).expand()
    (func,) = _group(tiny_model_dir, func=_other_format).expand()
    assert run_fingerprint(lr, _Data(rows)) != fingerprint
    assert run_fingerprint(func, _Data(rows)) != fingerprint
    assert run_fingerprint(spec, _Data(support_dataset(n=8, seed=1))) != fingerprint


def test_a_rerun_of_a_finished_or_changed_sweep_trains_in_name_1_and_resume_is_an_explicit_choice(
    tmp_path, tiny_model_dir, create_tiny_model, capsys
):
    rows = support_dataset(n=8)
    exp = Experiment("reuse", experiment_path=tmp_path, verbose=False)
    exp.run_fit(_group(tiny_model_dir), create_tiny_model, rows, num_chunks=2)
    results = exp.get_results()
    exp.end()

    exp = Experiment("reuse", experiment_path=tmp_path)  # the notebook run again, unchanged
    assert exp.get_results().equals(results)  # opening it reads it
    capsys.readouterr()
    exp.run_fit(_group(tiny_model_dir), create_tiny_model, rows, num_chunks=2)
    notice = capsys.readouterr().out.splitlines()[0]
    assert notice.startswith("Experiment 'reuse' already holds this sweep, finished: this run_fit trains in")
    assert exp.experiment_name == "reuse_1" and exp.path == tmp_path.resolve() / "reuse_1"
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED"]  # trained again, apart
    exp.end()

    exp = Experiment("reuse", experiment_path=tmp_path, verbose=False)  # the notebook, one lr changed
    exp.run_fit(_group(tiny_model_dir, lr=2e-3), create_tiny_model, rows, num_chunks=2)
    assert exp.experiment_name == "reuse_2"
    assert exp.get_runs_info()["train.learning_rate"].tolist() == [2e-3]
    with pytest.raises(ResumeMismatch, match="a function .* or the data differs"):
        exp.run_fit(
            _group(tiny_model_dir, lr=2e-3), create_tiny_model, rows, num_chunks=2, seed=7, resume=True
        )
    assert len(exp.get_runs_info()) == 1  # nothing was added by the refused call

    exp.run_fit(_group(tiny_model_dir), create_tiny_model, rows, num_chunks=2, resume=False)
    info = exp.get_runs_info()
    assert info["sweep"].tolist() == [1, 2] and info["status"].tolist() == ["COMPLETED", "COMPLETED"]
    exp.run_fit(_group(tiny_model_dir, lr=2e-3), create_tiny_model, rows, num_chunks=2, resume=True)
    assert len(exp.get_runs_info()) == 2 and exp.experiment_name == "reuse_2"  # sweep 1 again: done
    exp.end()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reuse", "reuse_1", "reuse_2"]

    fresh = Experiment("fresh", experiment_path=tmp_path, verbose=False)
    with pytest.raises(ResumeMismatch, match="holds no runs to continue"):
        fresh.run_fit(_group(tiny_model_dir), create_tiny_model, rows, num_chunks=2, resume=True)
    fresh.end()


def test_a_second_run_fit_on_an_experiment_being_trained_is_refused(
    tmp_path, tiny_model_dir, create_tiny_model
):
    rows = support_dataset(n=8)
    owner = Experiment("busy", experiment_path=tmp_path, verbose=False)
    training, proceed = threading.Event(), threading.Event()

    def hold(controller):  # the owner is mid-sweep while the second run_fit is tried
        training.set()
        proceed.wait(60)

    owner.controller.hooks.between_turns.append(hold)
    handle = owner.run_fit(_group(tiny_model_dir), create_tiny_model, rows, num_chunks=4, background=True)
    assert training.wait(60)
    other = Experiment("busy", experiment_path=tmp_path, verbose=False)
    try:
        with pytest.raises(ExperimentBusy, match="already trains"):
            other.run_fit(_group(tiny_model_dir), create_tiny_model, rows, num_chunks=4)
        assert other.get_runs_info()["status"].tolist() == ["ONGOING"]
    finally:
        proceed.set()
    handle.wait()
    assert other.get_runs_info()["status"].tolist() == ["COMPLETED"]  # the reader changed nothing
    assert other.get_runs_info()["error"].isna().all()
    other.end()
    owner.end()


def test_a_disk_that_refuses_a_checkpoint_fails_only_that_run(tmp_path, tiny_model_dir, monkeypatch):
    # ENOSPC from the OS where run 2's checkpoint files are flushed (what a full disk raises).
    import errno

    from rapidfire_core.control import checkpoints

    real_fsync = checkpoints._fsync_file

    def fsync(path):
        parts = Path(path).parts
        if ("runs", "2") in zip(parts, parts[1:], strict=False):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_fsync(path)

    monkeypatch.setattr(checkpoints, "_fsync_file", fsync)
    exp = crash_sweep.run(str(tmp_path), "full-disk", tiny_model_dir, "sft")
    info = exp.get_runs_info().set_index("run_id")
    assert info.loc[1, "status"] == "COMPLETED"
    assert info.loc[2, "status"] == "FAILED" and "No space left on device" in info.loc[2, "error"]
    exp.end()


def test_a_run_store_that_cannot_be_written_stops_every_run_resumable(tmp_path, tiny_model_dir, monkeypatch):
    """The disk under runs.db fills mid-sweep: SQLite's "database or disk is full" on every write
    from the 30th on (the `store_full` fault, injected at the connection's commit: what a full
    disk does; a real 24 MiB tmpfs filled mid-run behaves the same, see docs/security.md)."""
    import sqlite3

    from rapidfire_core.control import CommandStore, RunStore, faults
    from rapidfire_core.control.unwritable import StoreUnwritable

    monkeypatch.setattr(faults, "_ARMED", {"store_full": 30})
    monkeypatch.setattr(faults, "_SEEN", {})
    exp = Experiment("full-store", experiment_path=str(tmp_path), verbose=False)
    with pytest.raises(StoreUnwritable) as caught:
        crash_sweep.run(str(tmp_path), "full-store", tiny_model_dir, "sft", exp=exp)
    message = str(caught.value)
    assert str(tmp_path / "full-store" / "runs.db") in message and "free of" in message
    assert "continues from it" in message and "run_fit again" in message
    assert caught.value.__suppress_context__ and caught.value.__cause__ is None  # one message
    assert isinstance(caught.value, sqlite3.OperationalError)

    monkeypatch.setattr(faults, "_ARMED", {})  # space was made
    stored = RunStore(tmp_path / "full-store" / "runs.db").runs()
    assert [r["status"] for r in stored] and all(r["status"] in ("NEW", "ONGOING") for r in stored)
    assert CommandStore(tmp_path / "full-store" / "runs.db").pending() == []
    again = crash_sweep.run(str(tmp_path), "full-store", tiny_model_dir, "sft", exp=exp)
    assert again.get_runs_info()["status"].tolist() == ["COMPLETED", "COMPLETED"]
    results = again.get_results()
    for run_id, steps in results.groupby("run_id"):  # each step once; counters carried on (the
        assert steps["step"].is_unique  # exact comparison with an uninterrupted sweep: test_crash_resume)
        assert steps["num_tokens"].is_monotonic_increasing, run_id
    exp.end()
