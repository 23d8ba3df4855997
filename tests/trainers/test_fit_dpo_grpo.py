"""DPO and GRPO run end to end through run_fit on a tiny model and log TRL's metrics."""

from __future__ import annotations

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFDPOConfig, RFGridSearch, RFGRPOConfig, RFLoraConfig, RFModelConfig
from rapidfire_core.demo.data import math_prompt_dataset, preference_dataset
from rapidfire_core.demo.rewards import format_reward
from tests.small_configs import LORA, dpo_two_betas, grpo_two_learning_rates


def test_dpo_two_betas_complete_and_log_reward_metrics(tmp_path, tiny_model_dir, create_tiny_model):
    config = dpo_two_betas(tiny_model_dir)
    exp = Experiment("dpo", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(config, trainer_type="DPO"),
        create_tiny_model,
        preference_dataset(n=8, seed=1),
        preference_dataset(n=4, seed=2),
        num_chunks=2,
        seed=0,
    )
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED", "COMPLETED"], info["error"].tolist()
    assert sorted(info["train.beta"].tolist()) == [0.1, 0.5]
    results = exp.get_results()
    for metric in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "eval_loss",
    ):
        assert metric in results.columns, metric
        assert results[metric].notna().any(), metric
    # step 1: the policy equals the reference (fresh adapter, B = 0), so the DPO loss is log(2)
    first = results[results.step == 1]["loss"].dropna()
    assert ((first - 0.6931).abs() < 1e-3).all()
    # eval after each of the 2 chunks of each run
    assert results.groupby("run_id")["eval_loss"].count().tolist() == [2, 2]
    exp.end()


def test_grpo_with_user_reward_functions(tmp_path, tiny_model_dir, create_tiny_model):
    config = grpo_two_learning_rates(tiny_model_dir)
    exp = Experiment("grpo", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(config, trainer_type="GRPO"), create_tiny_model, math_prompt_dataset(n=8), num_chunks=2
    )
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED", "COMPLETED"], info["error"].tolist()
    results = exp.get_results()
    assert "reward" in results.columns and results["reward"].notna().sum() >= 4
    assert any(c.startswith("rewards/answer_reward") for c in results.columns)
    assert (results.groupby("run_id")["step"].max() == 2).all()
    exp.end()


def test_dpo_run_in_chunks_equals_stock_dpo_trainer(tmp_path, tiny_model_dir, create_tiny_model):
    # The engine shares one PeftModel between runs and makes TRL use the base model (adapters
    # off) as the DPO reference; stock TRL gets that reference by creating the adapter itself.
    import torch
    from safetensors.torch import load_file
    from trl import DPOTrainer

    from rapidfire_core.scheduler.chunks import ChunkPlan
    from tests.stock_trl import stock_run

    rows = preference_dataset(n=12, seed=4)
    lora = RFLoraConfig(**LORA)
    args = RFDPOConfig(beta=0.1, learning_rate=5e-3, max_steps=8, per_device_train_batch_size=2, max_length=64,
                       logging_steps=1, seed=5)  # fmt: skip
    configs = List([RFModelConfig(model_name=tiny_model_dir, peft_config=lora, training_args=args),
                    RFModelConfig(model_name=tiny_model_dir, peft_config=RFLoraConfig(**{**LORA, "r": 4}),
                                  training_args=args.copy())])  # fmt: skip
    exp = Experiment("dpo-fidelity", experiment_path=tmp_path, verbose=False)
    exp.run_fit(RFGridSearch(configs, trainer_type="DPO"), create_tiny_model, rows, num_chunks=3, seed=1)
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED", "COMPLETED"]
    engine_losses = exp.get_results().query("run_id == 1")["loss"].tolist()
    stock_args = args.to_trl(output_dir=str(tmp_path / "stock"), report_to="none", save_strategy="no")
    stock_losses, stock_weights = stock_run(
        DPOTrainer, create_tiny_model, {"model_name": tiny_model_dir}, lora.to_peft(), stock_args, rows, None,
        ChunkPlan(len(rows), 3, 1), epochs=2,
    )  # fmt: skip
    torch.testing.assert_close(torch.tensor(engine_losses), torch.tensor(stock_losses), rtol=1e-5, atol=1e-6)
    saved = load_file(str(exp.path / "runs" / "1" / "adapter" / "adapter_model.safetensors"))
    for key, value in stock_weights.items():
        torch.testing.assert_close(saved[key], value, rtol=1e-5, atol=1e-6, msg=key)
    exp.end()


def test_grpo_with_fewer_prompts_than_one_generation_batch_is_rejected(
    tmp_path, tiny_model_dir, create_tiny_model
):
    import pytest

    config = RFModelConfig(
        model_name=tiny_model_dir,
        peft_config=RFLoraConfig(**LORA),
        reward_funcs=[format_reward],
        training_args=RFGRPOConfig(num_generations=2, per_device_train_batch_size=8, max_completion_length=4),
    )
    exp = Experiment("grpo-too-small", experiment_path=tmp_path, verbose=False)
    with pytest.raises(ValueError, match=r"one generation batch needs 4 prompts .* has 3 rows"):
        exp.run_fit(
            RFGridSearch(config, trainer_type="GRPO"),
            create_tiny_model,
            math_prompt_dataset(n=3),
            num_chunks=1,
        )
    assert exp.get_runs_info().empty
    exp.end()
