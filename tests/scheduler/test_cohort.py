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


def _fit_completed(tmp_path, name, configs, trainer_type, create_model, rows, num_chunks, seed):
    """An experiment that trained ``configs`` (execution="fused": fused where they can) to the end."""
    exp = Experiment(name, experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(configs, trainer_type=trainer_type), create_model, rows, num_chunks=num_chunks, seed=seed,
        execution="fused",
    )  # fmt: skip
    info = exp.get_runs_info()
    assert (info["status"] == "COMPLETED").all(), info["error"].tolist()
    return exp


@pytest.fixture
def train_rows():
    return support_dataset(n=NUM_ROWS, seed=3)


# Rank, alpha, targets, learning rate, schedule, warmup, weight decay, batch size, max length and
# gradient accumulation all differ (dropout: FUSED_DROPOUT_VARIANTS below).
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
    exp = _fit_completed(
        tmp_path, "fused-sft", configs, "SFT", create_tiny_model, train_rows, NUM_CHUNKS, SEED
    )
    info = exp.get_runs_info()
    # 12 steps of run 1 at least, each a fused forward (with 2+ members until the short runs end)
    assert exp.controller.fused_steps >= 12
    for run_id, (lora, args) in zip(info.run_id.tolist(), FUSED_VARIANTS, strict=True):
        _assert_run_matches_stock(exp, run_id, lora, args, tiny_model_dir, create_tiny_model, train_rows)
    exp.end()


DPO_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


def test_fused_dpo_runs_each_equal_their_solo_stock_run(tmp_path, tiny_model_dir, create_tiny_model):
    # Betas, loss types, ranks, learning rates and batch sizes differ; the reference log-probs are
    # computed once per distinct sequence and shared by the runs.
    from trl import DPOTrainer

    from rapidfire_core.automl import RFDPOConfig, RFModelConfig
    from rapidfire_core.demo.data import preference_dataset
    from rapidfire_core.scheduler.chunks import ChunkPlan
    from tests.stock_trl import (
        assert_adapter_equals_stock,
        assert_metrics_equal_stock,
        dpo_metric_scales,
        stock_run,
    )

    rows = preference_dataset(n=12, seed=4)
    common = dict(max_steps=6, max_length=64, logging_steps=1)
    variants = [
        (RFLoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
         RFDPOConfig(beta=0.1, learning_rate=5e-3, per_device_train_batch_size=2, seed=5, **common)),
        (RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
         RFDPOConfig(beta=0.5, loss_type=["ipo"], learning_rate=1e-3, per_device_train_batch_size=2, seed=6,
                     **common)),
        (RFLoraConfig(r=16, lora_alpha=16, target_modules="all-linear"),
         RFDPOConfig(beta=0.2, loss_type=["robust"], label_smoothing=0.1, learning_rate=2e-3,
                     per_device_train_batch_size=4, gradient_accumulation_steps=2, seed=7, **common)),
    ]  # fmt: skip
    configs = List([RFModelConfig(model_name=tiny_model_dir, peft_config=lora, training_args=args)
                    for lora, args in variants])  # fmt: skip
    exp = _fit_completed(tmp_path, "fused-dpo", configs, "DPO", create_tiny_model, rows, 3, 1)
    info = exp.get_runs_info()
    assert exp.controller.fused_steps >= 6
    computed, served = exp.controller.reference_sequences
    assert 0 < computed < served  # runs 1 and 2 see the same pairs in the same steps: shared
    results = exp.get_results()
    for run_id, (lora, args) in zip(info.run_id.tolist(), variants, strict=True):
        stock_args = args.to_trl(
            output_dir=str(tmp_path / f"stock-{run_id}"), report_to="none", save_strategy="no"
        )
        _, stock_weights, history = stock_run(
            DPOTrainer, create_tiny_model, {"model_name": tiny_model_dir}, lora.to_peft(), stock_args, rows, None,
            ChunkPlan(len(rows), 3, 1), epochs=4, with_history=True,
        )  # fmt: skip
        assert_metrics_equal_stock(
            results, run_id, history, DPO_METRICS, args.max_steps, dpo_metric_scales(history, args.beta)
        )
        assert_adapter_equals_stock(exp.path / "runs" / str(run_id), stock_weights, args.learning_rate)
    exp.end()


def _when_step(exp, run_id, step, action, out):
    """From another thread, as a user would: `action()` once `run_id` has trained `step` steps."""
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = exp.controller.runs.get(run_id)
        if run is not None and run.global_step >= step:
            out.append(exp.wait_for(action()))
            return
        time.sleep(0.002)


def _fit_in_background(exp, configs, create_model, train_rows):
    return exp.run_fit(
        RFGridSearch(configs, trainer_type="SFT"),
        create_model,
        train_rows,
        num_chunks=1,  # one chunk per epoch: every command lands mid-chunk, inside the cohort's turn
        seed=SEED,
        background=True,
        execution="fused",
    )


def test_a_member_stopped_mid_chunk_leaves_the_others_unchanged_and_resumes_exactly(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    import threading

    variants = FUSED_VARIANTS[:3]
    configs = List([_model_config(tiny_model_dir, lora, args) for lora, args in variants])
    exp = Experiment("fused-stop", experiment_path=tmp_path, verbose=False)
    handle = _fit_in_background(exp, configs, create_tiny_model, train_rows)
    stopped = []
    watcher = threading.Thread(target=_when_step, args=(exp, 2, 3, lambda: exp.stop_run(2), stopped))
    watcher.start()
    watcher.join()
    assert stopped and stopped[0].status == "applied", stopped
    handle.wait()
    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].tolist() == ["COMPLETED", "STOPPED", "COMPLETED"]
    assert exp.controller.fused_steps > 0
    exp.resume_run(2)
    exp.continue_fit()  # run 2 alone now: time-sliced, from where the cohort left it
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED"] * 3
    for run_id, (lora, args) in zip((1, 2, 3), variants, strict=True):
        _assert_run_matches_stock(exp, run_id, lora, args, tiny_model_dir, create_tiny_model, train_rows)
    exp.end()


def test_a_clone_joining_mid_chunk_leaves_the_others_unchanged(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    import threading

    variants = FUSED_VARIANTS[:2]
    configs = List([_model_config(tiny_model_dir, lora, args) for lora, args in variants])
    exp = Experiment("fused-clone", experiment_path=tmp_path, verbose=False)
    handle = _fit_in_background(exp, configs, create_tiny_model, train_rows)
    cloned = []
    changes = {"learning_rate": 2e-3, "peft.r": 4, "lora_alpha": 8}
    watcher = threading.Thread(target=_when_step, args=(exp, 1, 3, lambda: exp.clone_run(1, changes), cloned))
    watcher.start()
    watcher.join()
    handle.wait()
    assert cloned and cloned[0].status == "applied" and cloned[0].new_run_id == 3, cloned
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED"] * 3
    for run_id, (lora, args) in zip((1, 2), variants, strict=True):
        _assert_run_matches_stock(exp, run_id, lora, args, tiny_model_dir, create_tiny_model, train_rows)
    lora, args = variants[0]
    edited = (
        RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        _sft_args(learning_rate=2e-3),
    )
    _assert_run_matches_stock(exp, 3, *edited, tiny_model_dir, create_tiny_model, train_rows)
    exp.end()


# LoRA dropout differs per run (0.1, 0.2, 0.05) and so does gradient checkpointing (recompute
# must reuse each run's masks): each member draws its masks from its own RNG stream in the shapes
# PEFT draws them alone (lora.run_streams).
FUSED_DROPOUT_VARIANTS = [
    (RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]), _sft_args()),
    (
        RFLoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules="all-linear"),
        _sft_args(learning_rate=5e-4, seed=11, max_length=72, gradient_checkpointing=False),
    ),
    (
        RFLoraConfig(r=8, lora_alpha=8, lora_dropout=0.05, target_modules=["v_proj", "down_proj"]),
        _sft_args(learning_rate=2e-3, gradient_accumulation_steps=2, max_steps=6, seed=12),
    ),
]


def test_fused_dropout_runs_each_equal_their_solo_stock_run(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    configs = List([_model_config(tiny_model_dir, lora, args) for lora, args in FUSED_DROPOUT_VARIANTS])
    exp = _fit_completed(
        tmp_path, "fused-dropout", configs, "SFT", create_tiny_model, train_rows, NUM_CHUNKS, SEED
    )
    assert exp.controller.fused_steps >= 12
    info = exp.get_runs_info()
    for run_id, (lora, args) in zip(info.run_id.tolist(), FUSED_DROPOUT_VARIANTS, strict=True):
        _assert_run_matches_stock(exp, run_id, lora, args, tiny_model_dir, create_tiny_model, train_rows)
    exp.end()


def test_fused_grpo_generation_equals_each_runs_own_generation(tmp_path, tiny_model_dir, create_tiny_model):
    # One batched generate for both runs, each row through its run's adapter, sampled (and, in
    # TRL's training-mode generation, dropped out) from each run's own RNG stream.
    from rapidfire_core.automl import RFModelConfig
    from rapidfire_core.demo.data import math_prompt_dataset
    from tests.trainers.test_fidelity_grpo import NUM_CHUNKS as GRPO_CHUNKS
    from tests.trainers.test_fidelity_grpo import REWARDS, assert_grpo_run_matches_stock, grpo_args
    from tests.trainers.test_fidelity_grpo import SEED as GRPO_SEED

    rows = math_prompt_dataset(n=8)
    variants = [
        (RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]), grpo_args()),
        (RFLoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), grpo_args(learning_rate=1e-3, seed=9)),
    ]  # fmt: skip
    configs = List([RFModelConfig(model_name=tiny_model_dir, peft_config=lora, reward_funcs=REWARDS,
                                  training_args=args) for lora, args in variants])  # fmt: skip
    exp = _fit_completed(
        tmp_path, "fused-grpo", configs, "GRPO", create_tiny_model, rows, GRPO_CHUNKS, GRPO_SEED
    )
    assert exp.controller.batched_generations >= 2  # both runs completed in one generate
    metrics = ("loss", "reward", "completions/mean_length")
    for run_id, (lora, args) in zip((1, 2), variants, strict=True):
        assert_grpo_run_matches_stock(
            exp, run_id, lora, args, tiny_model_dir, create_tiny_model, rows, metrics
        )
    exp.end()


def test_fused_members_evaluate_through_their_own_adapter(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    """Evaluations inside a cohort turn (TRL's eval_steps, between a member's fused hand-offs, and
    the engine's at every chunk end) each use the member's own adapter: its eval losses equal
    those of the same configs trained time-sliced."""
    eval_rows = support_dataset(n=6, seed=9)
    loras = [lora for lora, _ in FUSED_VARIANTS[:2]]
    configs = List(
        [
            _model_config(
                tiny_model_dir,
                lora,
                _sft_args(eval_strategy="steps", eval_steps=3, max_steps=9, learning_rate=lr),
            )
            for lora, lr in zip(loras, (1e-2, 1e-3), strict=True)
        ]
    )
    eval_losses = {}
    for execution in ("fused", "sliced"):
        exp = Experiment(f"fused-eval-{execution}", experiment_path=tmp_path, verbose=False)
        exp.run_fit(
            RFGridSearch(configs, trainer_type="SFT"),
            create_tiny_model,
            train_rows,
            eval_rows,
            num_chunks=3,
            seed=SEED,
            execution=execution,
        )
        assert (exp.get_runs_info()["status"] == "COMPLETED").all()
        if execution == "fused":
            assert exp.controller.fused_steps >= 9
        results = exp.get_results()
        eval_losses[execution] = {
            run_id: results[results.run_id == run_id]["eval_loss"].dropna().tolist()
            for run_id in sorted(results.run_id.unique())
        }
        exp.end()
    for run_id, sliced in eval_losses["sliced"].items():
        fused = eval_losses["fused"][run_id]
        assert len(fused) == len(sliced) >= 3
        assert fused == pytest.approx(sliced, rel=1e-5)
    first, second = eval_losses["fused"].values()
    # Two different adapters evaluate apart by far more than the tolerance: the check can fail.
    assert max(abs(a - b) for a, b in zip(first, second, strict=True)) > 1e-3
