"""The progress display: a line per turn, live progress (steps/s, ETA) inside a turn."""

from __future__ import annotations

import importlib
import io
import time
from types import SimpleNamespace

from rapidfire_core.scheduler import progress as progress_module
from rapidfire_core.scheduler.progress import ProgressDisplay


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(step=0):
    return SimpleNamespace(
        run_id=3, chunks_done=5, num_chunks=4, global_step=step, max_steps=40,
        latest={"loss": 1.5}, knobs={"train.learning_rate": 1e-3, "peft.r": 8},
    )  # fmt: skip


def test_terminal_redraws_the_running_line_with_rate_and_eta(monkeypatch):
    monkeypatch.setattr(progress_module, "TERMINAL_EVERY_S", 0.0)
    stream = _Terminal()
    display = ProgressDisplay(["train.learning_rate"], stream=stream)
    run = _run(step=10)
    display.begin_turn(run)
    time.sleep(0.05)
    run.global_step = 12
    display.step(run)
    live = stream.getvalue()
    assert live.startswith("\r\033[K[epoch 2 chunk 2/4] run 3 (learning_rate=0.001) step 12/40 loss=1.5000")
    assert " steps/s  ETA " in live
    display.end_turn(run, "STOPPED")
    assert stream.getvalue().endswith("step 12/40 loss=1.5000 -> STOPPED\n")


def test_plain_output_prints_a_progress_line_only_every_so_often(monkeypatch):
    stream = io.StringIO()
    display = ProgressDisplay([], stream=stream)
    assert display.mode == "plain"
    run = _run(step=1)
    display.begin_turn(run)
    for step in range(2, 6):
        run.global_step = step
        display.step(run)
    assert stream.getvalue() == ""  # a short turn leaves only its end line
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_S", 0.0)
    run.global_step = 7
    display.step(run)
    assert "step 7/40" in stream.getvalue() and "steps/s" in stream.getvalue()
    display.note("command 4 (stop run 3, from cli): applied")
    assert stream.getvalue().endswith("command 4 (stop run 3, from cli): applied\n")


def test_a_quiet_display_prints_nothing():
    stream = _Terminal()
    display = ProgressDisplay([], stream=stream, enabled=False)
    run = _run(step=1)
    display.begin_turn(run)
    display.step(run)
    display.end_turn(run, "COMPLETED")
    display.note("x")
    assert stream.getvalue() == ""


def test_a_sweep_prints_no_dataset_preparation_bars(
    tmp_path, tiny_model_dir, create_tiny_model, capfd, monkeypatch
):
    from datasets.utils import logging as ds_logging

    from rapidfire_core import Experiment
    from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
    from rapidfire_core.demo.data import formatting_function, support_dataset

    ds_tqdm = importlib.import_module("datasets.utils.tqdm")  # (datasets.utils.tqdm is also a class)
    monkeypatch.setattr(ds_tqdm, "HF_DATASETS_DISABLE_PROGRESS_BARS", None)  # the suite's env sets it
    ds_logging.enable_progress_bar()  # as in a user's session (the test suite disables them)
    assert ds_logging.is_progress_bar_enabled()
    try:
        config = RFModelConfig(
            model_name=tiny_model_dir,
            peft_config=RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]),
            training_args=RFSFTConfig(per_device_train_batch_size=4, max_length=64, max_steps=2,
                                      learning_rate=List([1e-3, 1e-4])),
            formatting_func=formatting_function,
        )  # fmt: skip
        exp = Experiment("quiet", experiment_path=tmp_path)
        exp.run_fit(
            RFGridSearch(config, trainer_type="SFT"), create_tiny_model, support_dataset(n=8), num_chunks=2
        )
        exp.end()
        assert ds_logging.is_progress_bar_enabled()  # the user's setting is restored
    finally:
        ds_logging.disable_progress_bar()
    out = capfd.readouterr()
    text = out.out + out.err
    for bar in ("Tokenizing", "Truncating", "Adding EOS", "Converting", "Applying chat template"):
        assert bar not in text
    # the two LoRA runs share the base model: they train fused, and each line names its run
    assert "[epoch 1 chunk 1/2] runs 1,2 fused: run 1" in text and "rapidfire dashboard" in text
