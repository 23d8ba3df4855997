"""Fused cohorts: runs trained in one forward and backward equal their solo stock TRL runs."""

from __future__ import annotations

import pytest

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig
from rapidfire_core.demo.data import support_dataset
from tests.trainers.test_fidelity_sft import (
    NUM_CHUNKS,
    NUM_ROWS,
    SEED,
    _assert_run_matches_stock,
    _model_config,
    _sft_args,
)


@pytest.fixture
def train_rows():
    return support_dataset(n=NUM_ROWS, seed=3)


# Rank, alpha, targets, learning rate, schedule, warmup, weight decay, batch size, max length and
# gradient accumulation all differ; dropout is 0 (a fused step draws one mask for all rows).
FUSED_VARIANTS = [
    (RFLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), _sft_args()),
    (
        RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        _sft_args(learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=2, seed=11, max_length=72),
    ),
    (
        RFLoraConfig(r=16, lora_alpha=16, target_modules=["v_proj", "down_proj"]),
        _sft_args(learning_rate=2e-3, gradient_accumulation_steps=2, max_steps=6, weight_decay=0.1),
    ),
    (
        RFLoraConfig(r=2, lora_alpha=4, target_modules="all-linear"),
        _sft_args(per_device_train_batch_size=4, max_steps=6, max_grad_norm=0.05),
    ),
]


def test_fused_sft_runs_each_equal_their_solo_stock_run(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    configs = List([_model_config(tiny_model_dir, lora, args) for lora, args in FUSED_VARIANTS])
    exp = Experiment("fused-sft", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(configs, trainer_type="SFT"),
        create_tiny_model,
        train_rows,
        num_chunks=NUM_CHUNKS,
        seed=SEED,
    )
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"] * 4, info["error"].tolist()
    # 12 steps of run 1 at least, each a fused forward (with 2+ members until the short runs end)
    assert exp.controller.fused_steps >= 12
    for run_id, (lora, args) in zip(info.run_id.tolist(), FUSED_VARIANTS, strict=True):
        _assert_run_matches_stock(exp, run_id, lora, args, tiny_model_dir, create_tiny_model, train_rows)
    exp.end()
