"""The fidelity matrix: mixed sweeps over the knobs the seeds and RapidFire AI's tutorials vary, on one
shared base model, each run compared with the same config trained alone by stock TRL (per-step
losses and the metrics its trainer logs, final adapter), time-sliced and fused.

Small shapes (tiny Llama, a few steps) so that the whole matrix stays within a few CI minutes.
Each config's stock run is trained once and compared with both executions.
"""

from __future__ import annotations

import pytest

from rapidfire_core import Experiment
from rapidfire_core.automl import (
    List,
    RFDPOConfig,
    RFGridSearch,
    RFGRPOConfig,
    RFLoraConfig,
    RFModelConfig,
)
from rapidfire_core.demo.data import math_prompt_dataset, preference_dataset, support_dataset
from rapidfire_core.scheduler.chunks import ChunkPlan
from tests.stock_trl import (
    assert_adapter_equals_stock,
    assert_metrics_equal_stock,
    dpo_metric_scales,
    fp32_atol,
    stock_run,
    stock_sft_run,
)
from tests.trainers.test_fidelity_grpo import REWARDS, stock_grpo_run
from tests.trainers.test_fidelity_sft import _model_config, _sft_args

EXECUTIONS = ("sliced", "fused")

# SFT: rank, alpha, dropout, targets, learning rate, scheduler, warmup, batch, accumulation,
# max length, completion-only loss.
SFT_MATRIX = [
    (RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]), _sft_args(max_steps=6)),
    (RFLoraConfig(r=4, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"),
     _sft_args(learning_rate=3e-4, lr_scheduler_type="cosine", warmup_steps=2, max_steps=6, max_length=64)),
    (RFLoraConfig(r=16, lora_alpha=8, lora_dropout=0.2, target_modules=["k_proj", "o_proj", "up_proj"]),
     _sft_args(per_device_train_batch_size=3, gradient_accumulation_steps=2, max_steps=3,
               lr_scheduler_type="constant_with_warmup", warmup_steps=1, completion_only_loss=False)),
]  # fmt: skip

# DPO: beta, loss types (weighted lists), use_weighting, label smoothing, and RPO's NLL term (TRL 1.16
# spells rpo_alpha as the loss type "sft" with its weight).
DPO_COMMON = dict(max_steps=4, max_length=64, logging_steps=1, per_device_train_batch_size=2)
DPO_MATRIX = [
    (RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
     RFDPOConfig(beta=0.1, learning_rate=5e-3, seed=5, use_weighting=True, **DPO_COMMON)),
    (RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
     RFDPOConfig(beta=0.3, loss_type=["sigmoid", "ipo"], loss_weights=[1.0, 0.5], learning_rate=2e-3, seed=6,
                 **DPO_COMMON)),
    (RFLoraConfig(r=8, lora_alpha=8, lora_dropout=0.05, target_modules="all-linear"),
     RFDPOConfig(beta=0.2, loss_type=["robust", "sft"], loss_weights=[1.0, 0.5], label_smoothing=0.1,
                 learning_rate=1e-3, seed=7, **DPO_COMMON)),
]  # fmt: skip

# GRPO: temperature, top_p, num_generations, beta, loss type, epsilon, reward scaling, reward weights.
GRPO_COMMON = dict(per_device_train_batch_size=4, max_completion_length=6, max_steps=3, logging_steps=1)
GRPO_MATRIX = [
    (RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
     RFGRPOConfig(learning_rate=5e-3, num_generations=2, temperature=0.7, beta=0.04, seed=5, **GRPO_COMMON)),
    (RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
     RFGRPOConfig(learning_rate=2e-3, num_generations=4, top_p=0.9, beta=0.0, loss_type="dr_grpo", epsilon=0.1,
                  scale_rewards="batch", seed=6, **GRPO_COMMON)),
    (RFLoraConfig(r=8, lora_alpha=8, target_modules="all-linear"),
     RFGRPOConfig(learning_rate=1e-3, num_generations=2, loss_type="bnpo", scale_rewards="none",
                  reward_weights=[1.0, 0.5], beta=0.02, seed=7, **GRPO_COMMON)),
]  # fmt: skip


def _fit_both(tmp_path, name, configs, trainer_type, create_model, rows, num_chunks, seed) -> dict:
    """{execution: an experiment that trained ``configs`` to the end}, sliced and fused."""
    runs = {}
    for execution in EXECUTIONS:
        exp = Experiment(f"{name}-{execution}", experiment_path=tmp_path, verbose=False)
        exp.run_fit(
            RFGridSearch(List(configs), trainer_type=trainer_type), create_model, rows, num_chunks=num_chunks,
            seed=seed, execution=execution,
        )  # fmt: skip
        info = exp.get_runs_info()
        assert (info["status"] == "COMPLETED").all(), info["error"].tolist()
        runs[execution] = exp
    return runs


def _stock_args(args, tmp_path, index: int):
    return args.to_trl(output_dir=str(tmp_path / f"stock-{index}"), report_to="none", save_strategy="no")


def test_sft_matrix_each_run_equals_stock(tmp_path, tiny_model_dir, create_tiny_model):
    from rapidfire_core.demo.data import formatting_function

    rows, chunks, seed = support_dataset(n=12, seed=3), 3, 2
    configs = [_model_config(tiny_model_dir, lora, args) for lora, args in SFT_MATRIX]
    runs = _fit_both(tmp_path, "sft", configs, "SFT", create_tiny_model, rows, chunks, seed)
    assert runs["fused"].controller.fused_steps >= 3
    for index, (lora, args) in enumerate(SFT_MATRIX):
        trl_args = _stock_args(args, tmp_path, index)
        losses, weights = stock_sft_run(
            create_tiny_model, {"model_name": tiny_model_dir}, lora.to_peft(), trl_args, rows,
            formatting_function, ChunkPlan(len(rows), chunks, seed), epochs=4,
        )  # fmt: skip
        history = [{"loss": loss} for loss in losses]
        for exp in runs.values():
            assert_metrics_equal_stock(exp.get_results(), index + 1, history, ("loss",), args.max_steps)
            assert_adapter_equals_stock(exp.path / "runs" / str(index + 1), weights, args.learning_rate)
    for exp in runs.values():
        exp.end()


DPO_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen")


def test_dpo_matrix_each_run_equals_stock(tmp_path, tiny_model_dir, create_tiny_model):
    from trl import DPOTrainer

    rows, chunks, seed = preference_dataset(n=8, seed=4), 2, 1
    configs = [
        RFModelConfig(model_name=tiny_model_dir, peft_config=lora, training_args=args)
        for lora, args in DPO_MATRIX
    ]
    runs = _fit_both(tmp_path, "dpo", configs, "DPO", create_tiny_model, rows, chunks, seed)
    assert runs["fused"].controller.fused_steps >= 4
    for index, (lora, args) in enumerate(DPO_MATRIX):
        trl_args = _stock_args(args, tmp_path, index)
        _, weights, history = stock_run(
            DPOTrainer, create_tiny_model, {"model_name": tiny_model_dir}, lora.to_peft(), trl_args, rows, None,
            ChunkPlan(len(rows), chunks, seed), epochs=3, with_history=True,
        )  # fmt: skip
        scales = dpo_metric_scales(history, args.beta) | {
            "logps/chosen": max(abs(e["logps/chosen"]) for e in history if "logps/chosen" in e)
        }
        for exp in runs.values():
            assert_metrics_equal_stock(
                exp.get_results(), index + 1, history, DPO_METRICS, args.max_steps, scales
            )
            assert_adapter_equals_stock(exp.path / "runs" / str(index + 1), weights, args.learning_rate)
    for exp in runs.values():
        exp.end()


GRPO_METRICS = ("loss", "reward", "entropy", "kl", "completions/mean_length")


def test_grpo_matrix_each_run_equals_stock(tmp_path, tiny_model_dir, create_tiny_model):
    rows, chunks, seed = math_prompt_dataset(n=8), 2, 3
    configs = [
        RFModelConfig(model_name=tiny_model_dir, peft_config=lora, reward_funcs=REWARDS, training_args=args)
        for lora, args in GRPO_MATRIX
    ]
    runs = _fit_both(tmp_path, "grpo", configs, "GRPO", create_tiny_model, rows, chunks, seed)
    plan = ChunkPlan(len(rows), chunks, seed)
    for index, (lora, args) in enumerate(GRPO_MATRIX):
        trl_args = _stock_args(args, tmp_path, index)
        history, weights = stock_grpo_run(
            create_tiny_model, tiny_model_dir, lora.to_peft(), trl_args, rows, plan
        )
        metrics = [m for m in GRPO_METRICS if any(m in e for e in history)]  # no kl when beta = 0
        for exp in runs.values():
            # The loss and KL sum per-token terms of order 1 (unit-std advantages, ratios ~1).
            scales = {"loss": 1.0, "kl": 1.0}
            assert_metrics_equal_stock(exp.get_results(), index + 1, history, metrics, args.max_steps, scales)
            assert_adapter_equals_stock(exp.path / "runs" / str(index + 1), weights, args.learning_rate)
    for exp in runs.values():
        exp.end()


def test_fp32_tolerance_scales_with_the_terms_summed():
    # A tolerance that did not scale would pass a DPO reward summed from ~1e2-sized log-probs on one
    # CPU and fail it on another; this one grows with the terms, not with the (small) result.
    assert fp32_atol(125.0) > 1.14e-5 > fp32_atol(0.05)


pytestmark = pytest.mark.slow
