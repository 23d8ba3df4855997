"""Steering is exact: stop + resume, clones and ops on a sibling leave trajectories as stock TRL's.

Each test trains on the tiny local Llama and compares per-step losses and final adapter
weights with the same config trained alone by stock TRL on the engine's data order
(`tests.trainers.test_fidelity_sft._assert_run_matches_stock`, rtol 1e-5).
"""

from __future__ import annotations

import threading
import time

import pytest

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig
from rapidfire_core.demo.data import support_dataset
from tests.trainers.test_fidelity_sft import (
    NUM_CHUNKS,
    SEED,
    _assert_run_matches_stock,
    _model_config,
    _sft_args,
)


@pytest.fixture
def train_rows():
    return support_dataset(n=16, seed=3)


def _lora(**kw):
    base = dict(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    return RFLoraConfig(**(base | kw))


def _stop_when(exp, run_id, step, stopped):
    """From another thread, as a user would: stop `run_id` as soon as it has trained `step` steps."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = exp.controller.runs.get(run_id)
        if run is not None and run.global_step >= step:
            stopped.append(exp.wait_for(exp.stop_run(run_id)))
            return
        time.sleep(0.002)


def test_stop_mid_chunk_then_resume_equals_an_uninterrupted_run(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    # One chunk per epoch (8 steps of 2 rows): a stop after step 3 lands inside a turn, at the
    # next optimizer step. Dropout 0.1 checks that the RNG streams survive the pause; the
    # sibling keeps training while run 1 is parked.
    variants = [
        (_lora(), _sft_args()),
        (_lora(r=4, lora_dropout=0.0), _sft_args(learning_rate=5e-4, seed=11)),
    ]
    configs = List([_model_config(tiny_model_dir, lora, args) for lora, args in variants])
    exp = Experiment("stop-resume", experiment_path=tmp_path, verbose=False)
    handle = exp.run_fit(
        RFGridSearch(configs, trainer_type="SFT"),
        create_tiny_model,
        train_rows,
        num_chunks=1,
        seed=SEED,
        background=True,
        execution="sliced",  # dropout 0.1: time-sliced (a fused step draws one mask for all rows)
    )
    stopped = []
    watcher = threading.Thread(target=_stop_when, args=(exp, 1, 3, stopped))
    watcher.start()
    watcher.join()
    assert stopped and stopped[0].status == "applied", stopped
    at_stop = stopped[0].result["global_step"]
    assert 3 <= at_stop < 12  # parked mid-run, before its last step
    handle.wait()  # run 2 trains to the end while run 1 is parked; then run_fit returns
    info = exp.get_runs_info().set_index("run_id")
    assert info.loc[1, "status"] == "STOPPED" and info.loc[2, "status"] == "COMPLETED"
    assert exp.get_results().query("run_id == 1")["step"].max() == at_stop  # no step after the stop
    exp.resume_run(1)
    exp.continue_fit()
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED", "COMPLETED"]
    for run_id, (lora, args) in zip((1, 2), variants, strict=True):
        _assert_run_matches_stock(exp, run_id, lora, args, tiny_model_dir, create_tiny_model, train_rows)
    exp.end()


def test_cold_clone_equals_a_fresh_stock_run_of_the_edited_config(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    lora, args = _lora(lora_dropout=0.0), _sft_args(max_steps=8)
    exp = Experiment("cold-clone", experiment_path=tmp_path, verbose=False)
    commands = []

    def clone_after_first_turn(controller):
        if not commands:  # the edit changes the lr, the schedule, the rank and alpha
            changes = {"learning_rate": 2e-3, "lr_scheduler_type": "cosine", "peft.r": 4, "lora_alpha": 8}
            commands.append(exp.clone_run(1, changes))

    exp.controller.hooks.between_turns.append(clone_after_first_turn)
    exp.run_fit(
        RFGridSearch(_model_config(tiny_model_dir, lora, args), trainer_type="SFT"),
        create_tiny_model,
        train_rows,
        num_chunks=NUM_CHUNKS,
        seed=SEED,
    )
    done = exp.wait_for(commands[0], timeout=1)
    assert done.status == "applied" and done.new_run_id == 2
    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].tolist() == ["COMPLETED", "COMPLETED"]
    assert info.loc[2, "parent_run_id"] == 1 and not info.loc[2, "warm_start"]
    assert info.loc[2, "peft.r"] == 4 and info.loc[2, "train.learning_rate"] == 2e-3
    edited_lora = _lora(lora_dropout=0.0, r=4, lora_alpha=8)
    edited_args = _sft_args(max_steps=8, learning_rate=2e-3, lr_scheduler_type="cosine")
    _assert_run_matches_stock(exp, 2, edited_lora, edited_args, tiny_model_dir, create_tiny_model, train_rows)
    _assert_run_matches_stock(exp, 1, lora, args, tiny_model_dir, create_tiny_model, train_rows)  # untouched
    exp.end()


def test_warm_clone_starts_from_the_parents_weights_and_position_with_its_own_lr(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    # 16 rows, 4 chunks, batch 2: 2 steps per chunk. After the parent's first turn (steps 1-2)
    # it is stopped and cloned warm; both commands apply at its next step boundary, so the clone
    # gets the weights after step 2 and the data from row 4 on.
    lora = _lora(lora_dropout=0.0)
    args = _sft_args(max_steps=8, lr_scheduler_type="constant")
    exp = Experiment("warm-clone", experiment_path=tmp_path, verbose=False)
    commands = []

    def stop_and_clone(controller):
        if not commands:
            commands.append(exp.stop_run(1))
            commands.append(exp.clone_run(1, {"learning_rate": 5e-3}, warm_start=True))

    exp.controller.hooks.between_turns.append(stop_and_clone)
    handle = exp.run_fit(
        RFGridSearch(_model_config(tiny_model_dir, lora, args), trainer_type="SFT"),
        create_tiny_model,
        train_rows,
        num_chunks=NUM_CHUNKS,
        seed=SEED,
        background=True,
    )
    handle.wait()
    stop, clone = (exp.wait_for(c, timeout=1) for c in commands)
    assert stop.result["global_step"] == 2 and clone.result["start_position"] == 4
    exp.resume_run(1)
    exp.continue_fit()  # the parent finishes as if never paused
    _assert_run_matches_stock(exp, 1, lora, args, tiny_model_dir, create_tiny_model, train_rows)

    results = exp.get_results()
    parent, child = results[results.run_id == 1], results[results.run_id == 2].reset_index(drop=True)
    # The clone's first step sees the parent's weights after step 2 on the parent's step-3 batch.
    assert child.loc[0, "loss"] == pytest.approx(parent[parent.step == 3]["loss"].item(), rel=1e-5)
    assert child.loc[0, "learning_rate"] == pytest.approx(5e-3)  # its own lr, not the parent's 1e-3
    assert child.loc[0, "chunk"] == 2  # it continues in the parent's chunk
    assert child.loc[1, "loss"] != pytest.approx(parent[parent.step == 4]["loss"].item(), rel=1e-5)
    info = exp.get_runs_info().set_index("run_id")
    assert info.loc[2, "status"] == "COMPLETED" and info.loc[2, "global_step"] == 8
    assert info.loc[2, "parent_run_id"] == 1 and info.loc[2, "warm_start"]
    exp.end()
