"""Sweeps the executor tests train on 2 executors and in one process, and their comparison.

python -m tests.cluster.sweeps node-loss ROOT MODEL_DIR    (the 2-node cluster test's process)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, support_dataset
from tests.scheduler.crash_sweep import create_model

NUM_CHUNKS, SEED = 4, 42


def sft_four(model_dir: str) -> RFGridSearch:
    """Four SFT runs, 6 steps of 2 rows over 4 chunks of 4 rows (into a second epoch); two
    accumulate gradients. Without dropout: they fuse exactly (a fused cohort draws its dropout
    masks in another order than a run alone: tests/scheduler/test_cohort.py)."""
    common = dict(per_device_train_batch_size=2, logging_steps=1, max_length=96, max_steps=6)
    lora = dict(lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    configs = List([
        RFModelConfig(
            model_name=model_dir,
            peft_config=List([RFLoraConfig(r=8, lora_alpha=16, **lora), RFLoraConfig(r=4, lora_alpha=8, **lora)]),
            training_args=List([
                RFSFTConfig(learning_rate=1e-3, seed=7, lr_scheduler_type="cosine", warmup_steps=2, **common),
                RFSFTConfig(learning_rate=5e-4, seed=11, gradient_accumulation_steps=2, **common),
            ]),
            formatting_func=formatting_function,
        ),
    ])  # fmt: skip
    return RFGridSearch(configs, trainer_type="SFT")


def sft_two(model_dir: str, callbacks: list | None = None) -> RFGridSearch:
    """Two SFT runs (learning rates 1e-3, 5e-4), 6 steps, dropout."""
    common = dict(per_device_train_batch_size=2, logging_steps=1, max_length=96, max_steps=6)
    config = RFModelConfig(
        model_name=model_dir,
        peft_config=RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
        training_args=RFSFTConfig(learning_rate=List([1e-3, 5e-4]), seed=7, **common),
        formatting_func=formatting_function,
        callbacks=callbacks,
    )
    return RFGridSearch(config, trainer_type="SFT")


class StepGate(TrainerCallback):
    """Holds each run at the end of optimizer step `step` until the file `path` exists (at most
    120 s), after writing `<path>.<run seed>.reached`: a test can act (send a command, kill an
    executor) while the runs are known to be mid-chunk. Changes no number."""

    def __init__(self, path: str, step: int) -> None:
        self.path, self.step = path, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != self.step or os.path.exists(self.path):
            return
        with open(f"{self.path}.{args.learning_rate}.reached", "w"):
            pass
        deadline = time.monotonic() + 120
        while not os.path.exists(self.path) and time.monotonic() < deadline:
            time.sleep(0.05)


def train_rows():
    return support_dataset(n=16, seed=3)


def fit(root, name: str, group, num_gpus: int | None = None, background: bool = False, **kwargs):
    """`group` trained in one process (num_gpus None) or on `num_gpus` executors; time-sliced
    unless `execution="fused"` is passed."""
    exp = Experiment(name, experiment_path=root, verbose=False, num_gpus=num_gpus)
    kwargs.setdefault("execution", "sliced")
    handle = exp.run_fit(group, create_model, kwargs.pop("train", None) or train_rows(), num_chunks=NUM_CHUNKS,
                         seed=SEED, background=background, **kwargs)  # fmt: skip
    return (exp, handle) if background else exp


def outcome(exp) -> dict:
    """Per run: status, its logged steps and losses, its saved adapter (JSON-able for a subprocess)."""
    results = exp.get_results()
    out = {}
    for rec in exp.get_runs_info().to_dict("records"):
        run_id = int(rec["run_id"])
        mine = results[results.run_id == run_id].dropna(subset=["loss"])
        adapter = exp.path / "runs" / str(run_id) / "adapter" / "adapter_model.safetensors"
        out[run_id] = {
            "status": rec["status"],
            "steps": [int(s) for s in results[results.run_id == run_id]["step"]],
            "losses": mine["loss"].tolist(),
            "adapter": str(adapter) if adapter.is_file() else None,
        }
    return out


def assert_same_numbers(mine: dict, reference: dict) -> None:
    """Each run COMPLETED with the reference's per-step losses (each step logged once) and its
    final adapter, at fp32 rounding of a few hundred ops (rtol 1e-5; atol 1e-6 of the weights'
    magnitude, at least 1e-6: a fused cohort sums in another order)."""
    assert mine.keys() == reference.keys()
    for run_id, theirs in reference.items():
        run = mine[run_id]
        assert run["status"] == "COMPLETED", (run_id, run["status"])
        assert run["steps"] == sorted(set(run["steps"])), run_id  # each step once in the run store
        assert len(run["losses"]) == len(theirs["losses"]), run_id
        torch.testing.assert_close(
            torch.tensor(run["losses"]), torch.tensor(theirs["losses"]), rtol=1e-5, atol=0
        )
        saved, expected = load_file(run["adapter"]), load_file(theirs["adapter"])
        assert saved.keys() == expected.keys()
        for key, value in expected.items():
            scale = max(float(value.abs().max()), 1.0)
            torch.testing.assert_close(saved[key], value, rtol=1e-5, atol=1e-6 * scale, msg=key)


def assert_mlflow_once(exp) -> None:
    """Every run's MLflow loss history holds each of its run-store steps once, and it FINISHED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(exp.tracking_uri)
    results = exp.get_results()
    for rec in exp.get_runs_info().to_dict("records"):
        mlflow_run = client.get_run(rec["mlflow_run_id"])
        assert mlflow_run.info.status == "FINISHED"
        history = [m.step for m in client.get_metric_history(rec["mlflow_run_id"], "loss")]
        logged = results[results.run_id == rec["run_id"]].dropna(subset=["loss"])["step"].tolist()
        assert sorted(history) == sorted(set(history)) == logged


def wait_for_file(path: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.1)


def node_loss(root: str, model_dir: str) -> dict:
    """Two Ray nodes of one CPU each, one executor on each; the worker node is removed while both
    runs stand inside chunk 2 (after step 3); the sweep's outcome (run in its own process: the
    test process has its own local Ray)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    inside = Path(root) / "inside"
    try:
        group = sft_two(model_dir, callbacks=[StepGate(str(inside), step=3)])
        exp, handle = fit(root, "node-loss", group, num_gpus=2, background=True)
        wait_for_file(Path(f"{inside}.0.001.reached"))
        wait_for_file(Path(f"{inside}.0.0005.reached"))
        doomed = next(e for e in exp.controller.executors if e.where["node_id"] == worker.node_id)
        cluster.remove_node(worker, allow_graceful=False)
        # The machine is gone: its processes too (a Ray worker outlives its killed raylet for a while).
        with contextlib.suppress(ProcessLookupError):
            os.kill(doomed.where["pid"], signal.SIGKILL)
        inside.touch()
        assert handle.wait(timeout=300)
        result = {"outcome": outcome(exp), "executors": len(exp.controller.executors)}
        assert_mlflow_once(exp)
        exp.end()
        return result
    finally:
        inside.touch()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "node-loss":
        print("RESULT " + json.dumps(node_loss(sys.argv[2], sys.argv[3])))
