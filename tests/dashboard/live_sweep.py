"""A real 3-run SFT sweep on the tiny local model that keeps training until it is steered, for
the end-to-end dashboard and CLI tests.

    python -m tests.dashboard.live_sweep ROOT MODEL_DIR     # a training process of its own

Runs are long (400 steps), so they stay ONGOING while a test steers them; `run_fit` returns
once no run is NEW or ONGOING (every run stopped, deleted or finished), and the process exits.
"""

from __future__ import annotations

import sys
import time

from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.control import CommandStore, RunStore
from rapidfire_core.demo.data import formatting_function, support_dataset

NAME = "live-sweep"
NUM_RUNS = 3


def sweep_group(model_dir: str) -> RFGridSearch:
    """3 runs: learning rate 1e-3 and 1e-4 at rank 4, and rank 8 at 1e-3."""

    def config(r: int, learning_rates: list[float]) -> RFModelConfig:
        return RFModelConfig(
            model_name=model_dir,
            peft_config=RFLoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]),
            training_args=RFSFTConfig(
                learning_rate=List(learning_rates),
                max_steps=400,
                per_device_train_batch_size=2,
                max_length=64,
                logging_steps=1,
            ),  # fmt: skip
            formatting_func=formatting_function,
        )

    return RFGridSearch(List([config(4, [1e-3, 1e-4]), config(8, [1e-3])]), trainer_type="SFT")


def start(exp, model_dir: str, create_model):
    """`exp.run_fit(..., background=True)` of the sweep: 2 chunks, evaluated at each chunk end."""
    return exp.run_fit(
        sweep_group(model_dir), create_model, support_dataset(n=16), support_dataset(n=4, seed=5),
        num_chunks=2, seed=0, background=True,
    )  # fmt: skip


def wait_until_training(exp_dir, timeout: float = 180.0, steps: int = 2) -> None:
    """Until the controller is live and every run has logged `steps` steps (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (exp_dir / "runs.db").exists():
            runs, commands = RunStore(exp_dir / "runs.db"), CommandStore(exp_dir / "runs.db")
            listed, alive = runs.runs(), commands.controller_alive()
            runs.close()
            commands.close()
            if alive and len(listed) == NUM_RUNS and all(r["global_step"] >= steps for r in listed):
                return
        time.sleep(0.2)
    raise TimeoutError(f"the sweep in {exp_dir} did not start training within {timeout:g} s")


def _create_model(model_config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_config["model_name"])
    tokenizer = AutoTokenizer.from_pretrained(model_config["model_name"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def main(root: str, model_dir: str) -> int:
    from rapidfire_core import Experiment

    exp = Experiment(NAME, experiment_path=root, verbose=False)
    start(exp, model_dir, _create_model).wait()
    exp.end()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
