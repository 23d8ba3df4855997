"""A run trained by the engine, chunk by chunk and interleaved with other runs, equals the
same config trained alone by stock TRL: same per-step losses, same final adapter weights."""

from __future__ import annotations

import pytest
import torch

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, support_dataset
from rapidfire_core.scheduler.chunks import ChunkPlan
from tests.stock_trl import assert_adapter_equals_stock, fp32_atol, stock_sft_run

NUM_ROWS, NUM_CHUNKS, SEED = 16, 4, 42


def _model_config(model_dir, lora, train_args):
    return RFModelConfig(
        model_name=model_dir, peft_config=lora, training_args=train_args, formatting_func=formatting_function
    )


def _sft_args(**overrides):
    base = dict(
        learning_rate=1e-3,
        max_steps=12,  # 8 steps per epoch at batch 2: the run crosses into a reshuffled 2nd epoch
        per_device_train_batch_size=2,
        logging_steps=1,
        max_length=96,
        seed=7,
    )
    base.update(overrides)
    return RFSFTConfig(**base)


def _assert_run_matches_stock(exp, run_id, spec_lora, spec_args, model_dir, create_model, train):
    results = exp.get_results()
    engine_losses = results[results.run_id == run_id]["loss"].dropna().tolist()
    plan = ChunkPlan(len(train), NUM_CHUNKS, SEED)
    args = spec_args.to_trl(
        output_dir=str(exp.path / f"stock-{run_id}"), report_to="none", save_strategy="no"
    )
    stock_losses, stock_weights = stock_sft_run(
        create_model,
        {"model_name": model_dir},
        spec_lora.to_peft(),
        args,
        train,
        formatting_function,
        plan,
        epochs=3,
    )
    assert len(engine_losses) == len(stock_losses) == args.max_steps
    # A mean cross-entropy: its terms are token losses of the loss's own magnitude.
    atol = fp32_atol(max(stock_losses))
    torch.testing.assert_close(torch.tensor(engine_losses), torch.tensor(stock_losses), rtol=1e-5, atol=atol)
    assert_adapter_equals_stock(exp.path / "runs" / str(run_id), stock_weights, args.learning_rate)


def _fit_single(tmp_path, name, model_dir, create_model, train_rows, eval_rows=None):
    """One SFT run (LoRA r=8 on q,v with dropout 0.1) through run_fit: (experiment, lora, args)."""
    lora = RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    args = _sft_args()
    exp = Experiment(name, experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(_model_config(model_dir, lora, args), trainer_type="SFT"),
        create_model,
        train_rows,
        eval_rows,
        num_chunks=NUM_CHUNKS,
        seed=SEED,
    )
    return exp, lora, args


@pytest.fixture
def train_rows():
    return support_dataset(n=NUM_ROWS, seed=3)


def test_single_config_in_four_chunks_equals_stock_trl(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    exp, lora, args = _fit_single(tmp_path, "fidelity-one", tiny_model_dir, create_tiny_model, train_rows)
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"]
    assert info["chunks_done"].tolist() == [6]  # 12 steps of 2 rows = 1.5 epochs of 4 chunks
    _assert_run_matches_stock(
        exp, int(info.run_id[0]), lora, args, tiny_model_dir, create_tiny_model, train_rows
    )
    exp.end()


def test_three_interleaved_configs_each_equal_their_solo_stock_run(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    # Different ranks, targets, learning rates, schedules, dropout and gradient accumulation
    # (an optimizer step of 4 rows = one whole chunk), all sharing one base model.
    variants = [
        (
            RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
            _sft_args(),
        ),
        (
            RFLoraConfig(
                r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
            ),
            _sft_args(learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=2, seed=11),
        ),
        (
            RFLoraConfig(r=16, lora_alpha=16, lora_dropout=0.2, target_modules=["v_proj", "down_proj"]),
            _sft_args(learning_rate=2e-3, gradient_accumulation_steps=2, max_steps=6, weight_decay=0.1),
        ),
    ]
    configs = List([_model_config(tiny_model_dir, lora, args) for lora, args in variants])
    exp = Experiment("fidelity-three", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(configs, trainer_type="SFT"),
        create_tiny_model,
        train_rows,
        num_chunks=4,
        seed=SEED,
        execution="sliced",  # time-sliced; the fused cohort has its own fidelity tests (tests/scheduler)
    )
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"] * 3
    for run_id, (lora, args) in zip(info.run_id.tolist(), variants, strict=True):
        _assert_run_matches_stock(exp, run_id, lora, args, tiny_model_dir, create_tiny_model, train_rows)
    exp.end()


def test_runs_with_different_mixed_precision_each_keep_their_own(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    # accelerate keeps the mixed-precision setting in a process-wide singleton that every new
    # trainer resets. A bf16 run built before an fp32 run must still train under bf16 autocast.
    # (bf16 autocast runs on CPU; the GPU probe is faked so the bf16 setting is kept.)
    from rapidfire_core.automl.translate import assume_gpu

    lora = RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    bf16_args = _sft_args(bf16=True, use_cpu=True, max_steps=6)
    fp32_args = _sft_args(bf16=False, use_cpu=True, max_steps=6)
    configs = List(
        [_model_config(tiny_model_dir, lora, bf16_args), _model_config(tiny_model_dir, lora, fp32_args)]
    )
    with assume_gpu(True):
        exp = Experiment("precision", experiment_path=tmp_path, verbose=False)
        exp.run_fit(
            RFGridSearch(configs, trainer_type="SFT"), create_tiny_model, train_rows, num_chunks=4, seed=SEED
        )
        info = exp.get_runs_info()
        assert info["status"].tolist() == ["COMPLETED", "COMPLETED"], info["error"].tolist()
        results = exp.get_results()
        bf16_losses = results[results.run_id == 1]["loss"].tolist()
        fp32_losses = results[results.run_id == 2]["loss"].tolist()
        assert bf16_losses != fp32_losses  # the two precisions really differ on this model
        for run_id, args in ((1, bf16_args), (2, fp32_args)):
            _assert_run_matches_stock(exp, run_id, lora, args, tiny_model_dir, create_tiny_model, train_rows)
        exp.end()


def test_chunk_end_evaluations_do_not_change_training(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows
):
    # The engine evaluates after every chunk; stock TRL (no eval set) does not. Evaluation draws
    # from the global RNG (each eval DataLoader iterator takes a seed), so without care the
    # dropout masks after the first evaluation would differ from the solo stock run.
    exp, lora, args = _fit_single(
        tmp_path,
        "fidelity-eval",
        tiny_model_dir,
        create_tiny_model,
        train_rows,
        support_dataset(n=4, seed=11),
    )
    assert exp.get_results()["eval_loss"].count() == 6  # one per chunk: 6 chunks in 12 steps
    _assert_run_matches_stock(exp, 1, lora, args, tiny_model_dir, create_tiny_model, train_rows)
    exp.end()
