"""A sweep killed with SIGKILL at any point and continued by calling run_fit again equals the
same sweep trained without interruption: every metric it logs at every step (loss, num_tokens,
mean_token_accuracy, entropy, learning_rate, grad_norm, epoch, train_loss, DPO's
rewards/logps/logits, ...; left out: wall-clock values, and total_flos, see NOT_REPRODUCIBLE)
and the final adapters (the fidelity tests' tolerance), every step once in the run store and
in MLflow, no MLflow run left RUNNING.

The killed process is a real subprocess (`tests.scheduler.crash_sweep`), killed by the engine's
fault hook at a named point (`rapidfire_core.control.faults`) or by the test at a random time.
Each kill costs one subprocess start (imports of torch, transformers, TRL, MLflow: ~10 s on a
loaded CI core); the continuation and the reference run in this process.

Tolerance. The sweeps train time-sliced: a continued run equals the uninterrupted one as the
fidelity tests hold the engine to stock TRL (rtol 1e-5, atol 1e-6). One test runs the default
fused cohorts: there a continued run may train in another cohort composition for a chunk than
it did uninterrupted (a run restarting from an older checkpoint catches up alone), and on this
sweep the fused path itself is within ~3e-4 (relative, losses) of the time-sliced one (measured
2026-12-01; issue 11's fidelity), so that test allows rtol 1e-3.
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from rapidfire_core.control import RunStore
from rapidfire_core.control.checkpoints import CheckpointStore, run_checkpoint_dir
from tests.scheduler import crash_sweep

REPO = Path(__file__).resolve().parents[2]
# Wall-clock values (train_runtime, train_samples_per_second, ...) differ between any two runs.
# total_flos too, here: transformers counts `model.num_parameters()` of the shared base model,
# which holds every run's adapter resident at that step, so it depends on which other runs were
# loaded when (a continued sweep does not rebuild a COMPLETED run's adapter). That is a gap to
# stock TRL (base + the run's own adapter), reported for the fidelity work, not a resume error.
NOT_REPRODUCIBLE = re.compile(r"(_runtime|_per_second|step_time)$|^total_flos$")


def _env(fault: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("RAPIDFIRE_FAULT", None)
    if fault:
        env["RAPIDFIRE_FAULT"] = fault
    return env


def _command(root: Path, name: str, model_dir: str, kind: str, execution: str = "sliced") -> list[str]:
    return [sys.executable, "-m", "tests.scheduler.crash_sweep", str(root), name, model_dir, kind, execution]


def _crash(root: Path, name: str, model_dir: str, kind: str, fault: str, execution: str = "sliced") -> None:
    proc = subprocess.run(_command(root, name, model_dir, kind, execution), env=_env(fault), cwd=str(REPO),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_model_dir):
    """The uninterrupted sweeps, trained once for the module: {kind: Experiment}."""
    root = tmp_path_factory.mktemp("uninterrupted")
    made = {kind: crash_sweep.run(str(root), f"ref-{kind}", tiny_model_dir, kind) for kind in ("sft", "dpo")}
    made["sft-fused"] = crash_sweep.run(str(root), "ref-sft-fused", tiny_model_dir, "sft", execution="fused")
    yield made
    for exp in made.values():
        exp.end()


def _assert_equals_uninterrupted(exp, reference, rtol: float = 1e-5) -> None:
    info = exp.get_runs_info()
    assert (
        info["status"].tolist() == reference.get_runs_info()["status"].tolist() == ["COMPLETED"] * len(info)
    )
    got, want = exp.get_results(), reference.get_results()
    client = MlflowClient(exp.tracking_uri)
    for run_id in info["run_id"].tolist():
        mine, theirs = got[got.run_id == run_id], want[want.run_id == run_id]
        assert mine["step"].is_unique  # the run store holds each step once
        assert mine["step"].tolist() == theirs["step"].tolist()
        logged = [c for c in theirs.columns if c not in ("run_id", "step") and not NOT_REPRODUCIBLE.search(c)]
        assert {"loss", "num_tokens", "learning_rate", "grad_norm"} <= set(logged)
        assert set(mine.columns) == set(theirs.columns)  # no metric more or less
        for metric in logged:
            _assert_same_values(metric, mine[metric].tolist(), theirs[metric].tolist(), rtol)
        adapter = Path("runs") / str(run_id) / "adapter" / "adapter_model.safetensors"
        saved, expected = load_file(str(exp.path / adapter)), load_file(str(reference.path / adapter))
        assert saved.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(saved[key], value, rtol=rtol, atol=1e-6, msg=key)
        mlflow_run = client.get_run(exp._store.get_run(run_id)["mlflow_run_id"])
        assert mlflow_run.info.status == "FINISHED"
        for metric in [m for m in logged if m not in ("epoch", "chunk")]:
            history = client.get_metric_history(mlflow_run.info.run_id, metric)
            steps = [m.step for m in history]
            assert steps == sorted(set(steps)) == mine.dropna(subset=[metric])["step"].tolist(), (
                metric
            )  # once
            _assert_same_values(metric, [m.value for m in history], mine[metric].dropna().tolist(), rtol)


def _assert_same_values(metric: str, got: list, want: list, rtol: float) -> None:
    """Equal where logged (NaN where not logged, at the same steps); counters exactly."""
    assert [math.isnan(v) for v in got] == [math.isnan(v) for v in want], metric
    got, want = [v for v in got if not math.isnan(v)], [v for v in want if not math.isnan(v)]
    if all(float(v).is_integer() for v in want) and metric != "loss":
        assert got == want, metric  # num_tokens, step counts: integers, exact
    else:
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                                   rtol=rtol, atol=1e-6, msg=metric)  # fmt: skip


@pytest.mark.parametrize(
    "fault",
    [
        "mid_chunk:4",  # run 1 inside its 3rd chunk, both runs with checkpoints
        "checkpoint_write:9",  # run 2's first checkpoint torn (a temporary folder, no manifest)
        "metric_flush:3",  # metrics in the run store past the last checkpoint, not in MLflow
        "after_checkpoint:4",  # a checkpoint on disk whose steps MLflow never got
        "after_completion:1",  # run 2 COMPLETED in the store, its MLflow run RUNNING, metrics missing
    ],
)
def test_sft_sweep_killed_at_a_fault_point_continues_exactly(tmp_path, tiny_model_dir, references, fault):
    _crash(tmp_path, "sweep", tiny_model_dir, "sft", fault)
    store = RunStore(tmp_path / "sweep" / "runs.db")
    assert {r["status"] for r in store.runs()} <= {"NEW", "ONGOING", "COMPLETED"}  # the dead process's view
    store.close()
    exp = crash_sweep.run(str(tmp_path), "sweep", tiny_model_dir, "sft")  # the same call again
    _assert_equals_uninterrupted(exp, references["sft"])
    exp.end()


def test_fused_sweep_killed_mid_chunk_continues(tmp_path, tiny_model_dir, references):
    _crash(tmp_path, "fused", tiny_model_dir, "sft", "mid_chunk:4", execution="fused")
    exp = crash_sweep.run(str(tmp_path), "fused", tiny_model_dir, "sft", execution="fused")
    assert exp.controller.fused_steps > 0
    _assert_equals_uninterrupted(exp, references["sft-fused"], rtol=1e-3)
    exp.end()


def test_a_torn_newest_checkpoint_is_skipped_for_the_one_before(tmp_path, tiny_model_dir, references):
    _crash(tmp_path, "torn", tiny_model_dir, "sft", "mid_chunk:4")
    checkpoints = CheckpointStore(run_checkpoint_dir(tmp_path / "torn", 1))
    newest, before = checkpoints.latest(), sorted(checkpoints.directory.iterdir())[0]
    with open(newest.path / "optimizer.pt", "r+b") as fh:  # a bad block in the newest one
        fh.seek(100)
        fh.write(b"\0" * 64)
    with pytest.warns(RuntimeWarning, match="does not match its checksum"):
        assert checkpoints.latest().path == before
    with pytest.warns(RuntimeWarning, match="unusable"):
        exp = crash_sweep.run(str(tmp_path), "torn", tiny_model_dir, "sft")
    _assert_equals_uninterrupted(exp, references["sft"])
    exp.end()


def test_dpo_run_killed_mid_chunk_continues_exactly(tmp_path, tiny_model_dir, references):
    _crash(tmp_path, "dpo", tiny_model_dir, "dpo", "mid_chunk:3")
    exp = crash_sweep.run(str(tmp_path), "dpo", tiny_model_dir, "dpo")
    _assert_equals_uninterrupted(exp, references["dpo"])
    exp.end()


def test_sft_sweep_killed_at_a_random_time_continues_exactly(tmp_path, tiny_model_dir, references):
    # A kill -9 from outside at a random moment once training has begun (the seed is printed
    # so a failure can be replayed with RAPIDFIRE_KILL_SEED).
    seed = int(os.environ.get("RAPIDFIRE_KILL_SEED", random.randrange(1 << 30)))
    print(f"RAPIDFIRE_KILL_SEED={seed}")
    proc = subprocess.Popen(_command(tmp_path, "random", tiny_model_dir, "sft"), env=_env(), cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        first = run_checkpoint_dir(tmp_path / "random", 1)
        deadline = time.monotonic() + 300
        while not (first.is_dir() and any(first.iterdir())) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(random.Random(seed).uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    exp = crash_sweep.run(str(tmp_path), "random", tiny_model_dir, "sft")
    _assert_equals_uninterrupted(exp, references["sft"])
    exp.end()


def test_a_run_stopped_mid_chunk_stays_stopped_across_a_restart_and_resumes_exactly(
    tmp_path, tiny_model_dir, references
):
    # Stopped by a command at step 3 (inside its 2nd chunk): its state is persisted at the stop.
    # A later process continues the sweep: the stopped run stays STOPPED (resumable) while the
    # other one is done; resume_run then trains it as if it had never stopped.
    from rapidfire_core import Experiment
    from rapidfire_core.dashboard.summary import resume_point

    exp = Experiment("stopped", experiment_path=tmp_path, verbose=False)  # time-sliced, as run() is
    stops, progress_step = [], exp.controller.progress_step

    def stop_after_step_3(run):  # in the run's thread, right after its step 3: parks at step 3
        progress_step(run)
        if run.run_id == 1 and run.global_step == 3 and not stops:
            stops.append(exp.stop_run(1))

    exp.controller.progress_step = stop_after_step_3
    exp.run_fit(crash_sweep.sft_group(tiny_model_dir), crash_sweep.create_model,
                crash_sweep.support_dataset(n=16, seed=3), num_chunks=crash_sweep.NUM_CHUNKS,
                seed=crash_sweep.SEED, execution="sliced")  # fmt: skip
    assert exp.wait_for(stops[0]).result["global_step"] == 3  # inside its 2nd chunk (steps 3-4)
    exp.end()

    # "Another process" continues this sweep (resume=True: by default a re-run of a sweep with no
    # run in flight trains in a new experiment, see fit.rerun).
    again = crash_sweep.run(str(tmp_path), "stopped", tiny_model_dir, "sft", resume=True)
    info = again.get_runs_info().set_index("run_id")
    assert info["status"].tolist() == ["STOPPED", "COMPLETED"] and not info.loc[1, "interrupted"]
    assert resume_point(again._store, again._store.get_run(1)) == {"chunk": 1, "step": 3, "how": "resume_run"}
    again.resume_run(1)
    again.continue_fit()
    _assert_equals_uninterrupted(again, references["sft"])
    again.end()
