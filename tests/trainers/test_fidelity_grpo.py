"""A GRPO run trained by the engine, chunk by chunk, equals the same config trained alone by
stock TRL's GRPOTrainer on the engine's prompt order: same sampled completions (rewards), same
losses, same final adapter (sampling included: the run's RNG streams are its own)."""

from __future__ import annotations

import pytest
from trl import GRPOTrainer

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFGRPOConfig, RFLoraConfig, RFModelConfig
from rapidfire_core.demo.data import math_prompt_dataset
from rapidfire_core.demo.rewards import answer_reward, format_reward
from rapidfire_core.scheduler.chunks import ChunkPlan, make_sampler
from tests.small_configs import LORA
from tests.stock_trl import assert_adapter_equals_stock, assert_metrics_equal_stock

NUM_CHUNKS, SEED = 2, 3
REWARDS = [answer_reward, format_reward]


def grpo_args(**overrides) -> RFGRPOConfig:
    base = dict(
        learning_rate=5e-3,
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=6,
        max_steps=4,
        logging_steps=1,
        beta=0.04,
        seed=5,
    )
    return RFGRPOConfig(**(base | overrides))


def stock_grpo_run(create_model, model_dir, lora, args, rows, plan):
    """(log history, adapter weights) of stock GRPOTrainer fed the engine's prompt order."""
    from peft import get_peft_model_state_dict

    class Ordered(GRPOTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return make_sampler("GRPO", self, plan, 0, source_rows=None)

    model, tokenizer = create_model({"model_name": model_dir})
    trainer = Ordered(
        model=model, reward_funcs=REWARDS, args=args, train_dataset=rows, processing_class=tokenizer,
        peft_config=lora,
    )  # fmt: skip
    trainer.train()
    weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(trainer.model).items()}
    return trainer.state.log_history, weights


def assert_grpo_run_matches_stock(exp, run_id, lora, args, model_dir, create_model, rows, metrics):
    stock_args = args.to_trl(
        output_dir=str(exp.path / f"stock-{run_id}"), report_to="none", save_strategy="no"
    )
    history, stock_weights = stock_grpo_run(
        create_model, model_dir, lora.to_peft(), stock_args, rows, ChunkPlan(len(rows), NUM_CHUNKS, SEED)
    )
    # The loss and KL sum per-token terms of order 1 (unit-std advantages, ratios ~1): scale 1.
    scales = {"loss": 1.0, "kl": 1.0}
    assert_metrics_equal_stock(exp.get_results(), run_id, history, metrics, args.max_steps, scales)
    assert_adapter_equals_stock(exp.path / "runs" / str(run_id), stock_weights, args.learning_rate)


def test_grpo_run_in_chunks_equals_stock_grpo_trainer(tmp_path, tiny_model_dir, create_tiny_model):
    rows = math_prompt_dataset(n=8)
    lora, args = RFLoraConfig(**LORA), grpo_args()
    config = RFModelConfig(
        model_name=tiny_model_dir, peft_config=lora, reward_funcs=REWARDS, training_args=args
    )
    exp = Experiment("grpo-fidelity", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(config, trainer_type="GRPO"), create_tiny_model, rows, num_chunks=NUM_CHUNKS, seed=SEED,
        execution="sliced",
    )  # fmt: skip
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"], info["error"].tolist()
    metrics = ("loss", "reward", "completions/mean_length", "kl")
    assert_grpo_run_matches_stock(exp, 1, lora, args, tiny_model_dir, create_tiny_model, rows, metrics)
    exp.end()


@pytest.mark.parametrize("execution", ["sliced", "auto"])
def test_grpo_runs_differing_in_temperature_each_equal_stock(
    tmp_path, tiny_model_dir, create_tiny_model, execution
):
    # TRL bakes `temperature` into the model's forward (`add_fused_lm_head`) when it builds a trainer:
    # on one shared base each run must compute with its own (issue 18: the last built won for all).
    rows = math_prompt_dataset(n=8)
    lora = RFLoraConfig(**LORA)
    temperatures = [0.4, 1.7]
    configs = List(
        [
            RFModelConfig(
                model_name=tiny_model_dir,
                peft_config=lora,
                reward_funcs=REWARDS,
                training_args=grpo_args(temperature=t),
            )  # fmt: skip
            for t in temperatures
        ]
    )
    exp = Experiment("grpo-temperatures", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(configs, trainer_type="GRPO"), create_tiny_model, rows, num_chunks=NUM_CHUNKS, seed=SEED,
        execution=execution,
    )  # fmt: skip
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"] * 2, info["error"].tolist()
    metrics = ("loss", "entropy", "reward", "completions/mean_length")
    for run_id, temperature in zip(info.run_id.tolist(), temperatures, strict=True):
        args = grpo_args(temperature=temperature)
        assert_grpo_run_matches_stock(
            exp, run_id, lora, args, tiny_model_dir, create_tiny_model, rows, metrics
        )
    exp.end()
