"""The engine with a run-state budget: runs evicted to the host pool and restored between
chunks train bit-identically to runs that never left the device."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, support_dataset
from rapidfire_core.memory import residency as residency_module

NUM_ROWS, NUM_CHUNKS, SEED = 16, 4, 42


def _variants():
    # Different ranks, targets, optimizers' schedules, dropout and gradient accumulation
    # (as in tests/trainers/test_fidelity_sft.py), all on one shared base model.
    common = dict(per_device_train_batch_size=2, logging_steps=1, max_length=96)
    return [
        (
            RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
            RFSFTConfig(learning_rate=1e-3, max_steps=10, seed=7, **common),
        ),
        (
            RFLoraConfig(
                r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
            ),
            RFSFTConfig(
                learning_rate=5e-4,
                max_steps=10,
                lr_scheduler_type="cosine",
                warmup_steps=2,
                seed=11,
                **common,
            ),
        ),
        (
            RFLoraConfig(r=16, lora_alpha=16, lora_dropout=0.2, target_modules=["v_proj", "down_proj"]),
            RFSFTConfig(
                learning_rate=2e-3,
                max_steps=6,
                gradient_accumulation_steps=2,
                weight_decay=0.1,
                seed=5,
                optim="adamw_torch",  # foreach AdamW: CPU step tensors, not the fused kernel
                **common,
            ),
        ),
    ]


@pytest.fixture(scope="module")
def train_rows():
    return support_dataset(n=NUM_ROWS, seed=3)


@pytest.fixture
def residency_spy(monkeypatch):
    """Records every RunResidency that run_fit creates."""
    created = []
    original = residency_module.RunResidency

    class Spy(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.turns = 0
            created.append(self)

        def before_turn(self, run, upcoming):
            self.turns += 1
            super().before_turn(run, upcoming)

    monkeypatch.setattr("rapidfire_core.scheduler.local_executor.RunResidency", Spy)  # the executor owns the pool
    return created


def _fit(tmp_path, name, model_dir, create_model, rows, budget):
    configs = List(
        [
            RFModelConfig(
                model_name=model_dir,
                peft_config=lora,
                training_args=args,
                formatting_func=formatting_function,
            )
            for lora, args in _variants()
        ]
    )
    exp = Experiment(name, experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(configs, trainer_type="SFT"),
        create_model,
        rows,
        num_chunks=NUM_CHUNKS,
        seed=SEED,
        gpu_state_budget=budget,
        execution="sliced",  # bit-identity of pooled vs resident time-sliced runs
    )
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"] * 3, info[["status", "error"]]
    results = exp.get_results()
    losses = {
        index: results[results.run_id == run_id]["loss"].dropna().tolist()
        for index, run_id in enumerate(info.run_id.tolist())
    }
    adapters = {
        index: load_file(str(exp.path / "runs" / str(run_id) / "adapter" / "adapter_model.safetensors"))
        for index, run_id in enumerate(info.run_id.tolist())
    }
    exp.end()
    return losses, adapters


def _assert_identical(a, b):
    losses_a, adapters_a = a
    losses_b, adapters_b = b
    assert losses_a == losses_b  # exact float equality, every step of every run
    for index, weights in adapters_a.items():
        assert weights.keys() == adapters_b[index].keys()
        for key, value in weights.items():
            assert torch.equal(value, adapters_b[index][key]), (index, key)


def test_every_run_evicted_between_chunks_is_bit_identical(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows, residency_spy
):
    plain = _fit(tmp_path, "resident", tiny_model_dir, create_tiny_model, train_rows, None)
    assert residency_spy == []  # no budget: no pool at all
    swapped = _fit(tmp_path, "budget-0", tiny_model_dir, create_tiny_model, train_rows, 0)
    _assert_identical(plain, swapped)

    (residency,) = residency_spy
    stats = residency.pool.stats()
    # 5 + 5 + 6 turns (10 and 10 steps of 2 rows, 6 steps of 4 rows, 4-row chunks). Each turn
    # starts with a restore; each but a run's last ends with an eviction, plus 3 at start.
    assert residency.turns == 16
    assert stats["restores"] == 16
    assert stats["evictions"] == 3 + 16 - 3
    assert stats["prefetches"] == 0  # budget 0: the next run never fits
    assert stats["packs"] == 3 + 3  # adapters at start, again once the optimizer state exists
    assert stats["entries"] == 0 and stats["arena"]["used"] == 0  # finished runs are dropped


def test_budget_for_two_runs_prefetches_and_stays_identical(
    tmp_path, tiny_model_dir, create_tiny_model, train_rows, residency_spy
):
    plain = _fit(tmp_path, "resident", tiny_model_dir, create_tiny_model, train_rows, None)
    sizes = _packed_sizes(tmp_path, tiny_model_dir, create_tiny_model, train_rows, residency_spy)
    budget = sum(sorted(sizes)[-2:])  # room for the two largest runs, never for all three
    swapped = _fit(tmp_path, "budget-2", tiny_model_dir, create_tiny_model, train_rows, budget)
    _assert_identical(plain, swapped)
    stats = residency_spy[-1].pool.stats()
    assert stats["prefetches"] > 0
    assert stats["evictions"] > 0


def _packed_sizes(tmp_path, model_dir, create_model, rows, spy):
    """Each run's packed device bytes once its optimizer state exists (from a budget-0 fit)."""
    sizes = {}
    original = residency_module.RunResidency.forget

    def record(self, run):
        sizes[run.run_id] = self.pool.device_bytes(run.run_id)
        original(self, run)

    patch = pytest.MonkeyPatch()
    patch.setattr(residency_module.RunResidency, "forget", record)
    try:
        _fit(tmp_path, "sizes", model_dir, create_model, rows, 0)
    finally:
        patch.undo()
    return list(sizes.values())


def test_bad_budget_is_rejected_before_training(tmp_path, tiny_model_dir, create_tiny_model, train_rows):
    lora, args = _variants()[0]
    config = RFModelConfig(
        model_name=tiny_model_dir, peft_config=lora, training_args=args, formatting_func=formatting_function
    )
    exp = Experiment("bad-budget", experiment_path=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="gpu_state_budget"):
        exp.run_fit(
            RFGridSearch(config, trainer_type="SFT"), create_tiny_model, train_rows, gpu_state_budget="lots"
        )
    assert exp.get_runs_info().empty
    exp.end()


def _fit_rl(tmp_path, name, trainer_type, model_dir, create_model, budget):
    from rapidfire_core.demo.data import math_prompt_dataset, preference_dataset
    from tests.small_configs import dpo_two_betas, grpo_two_learning_rates

    if trainer_type == "DPO":
        config = dpo_two_betas(model_dir)
        data = (preference_dataset(n=8, seed=1), preference_dataset(n=4, seed=2))
        metrics = ["loss", "rewards/margins", "eval_loss"]
    else:
        config = grpo_two_learning_rates(model_dir)
        data = (math_prompt_dataset(n=8), None)
        metrics = ["loss", "reward"]
    exp = Experiment(name, experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(config, trainer_type=trainer_type),
        create_model,
        *data,
        num_chunks=2,
        seed=0,
        gpu_state_budget=budget,
        execution="sliced",  # bit-identity of pooled vs resident time-sliced runs
    )
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"] * 2, info["error"].tolist()
    results = exp.get_results()
    values = {m: results[m].tolist() for m in metrics}
    adapters = [
        load_file(str(exp.path / "runs" / str(run_id) / "adapter" / "adapter_model.safetensors"))
        for run_id in info.run_id.tolist()
    ]
    exp.end()
    return values, adapters


@pytest.mark.parametrize("trainer_type", ["DPO", "GRPO"])
def test_dpo_and_grpo_runs_swapped_every_chunk_are_identical(
    tmp_path, tiny_model_dir, create_tiny_model, trainer_type
):
    plain = _fit_rl(tmp_path, "resident", trainer_type, tiny_model_dir, create_tiny_model, None)
    swapped = _fit_rl(tmp_path, "budget-0", trainer_type, tiny_model_dir, create_tiny_model, "0")
    assert plain[0].keys() == swapped[0].keys()
    for metric, values in plain[0].items():
        assert values == pytest.approx(swapped[0][metric], rel=0, abs=0, nan_ok=True), metric
    for a, b in zip(plain[1], swapped[1], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
