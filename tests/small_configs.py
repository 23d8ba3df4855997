"""Small SFT, DPO and GRPO config groups on the tiny test model, shared by the engine and pool tests."""

from __future__ import annotations

from rapidfire_core.automl import List, RFDPOConfig, RFGRPOConfig, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function
from rapidfire_core.demo.rewards import answer_reward, format_reward

LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def sft_two_learning_rates(model_dir: str) -> RFModelConfig:
    """Two SFT runs (lr 1e-3 and 1e-4) on the demo support data, 4 steps of 2 examples."""
    return RFModelConfig(
        model_name=model_dir,
        peft_config=RFLoraConfig(**LORA),
        training_args=RFSFTConfig(
            learning_rate=List([1e-3, 1e-4]),
            max_steps=4,
            per_device_train_batch_size=2,
            logging_steps=1,
            max_length=64,
        ),
        formatting_func=formatting_function,
    )


def dpo_two_betas(model_dir: str) -> RFModelConfig:
    """Two DPO runs (beta 0.1 and 0.5), 4 steps of 2 preference pairs."""
    return RFModelConfig(
        model_name=model_dir,
        peft_config=RFLoraConfig(**LORA),
        training_args=RFDPOConfig(
            beta=List([0.1, 0.5]),
            loss_type="sigmoid",
            learning_rate=5e-3,
            max_steps=4,
            per_device_train_batch_size=2,
            max_length=64,
            logging_steps=1,
        ),
    )


def grpo_two_learning_rates(model_dir: str) -> RFModelConfig:
    """Two GRPO runs (lr 1e-3 and 1e-4), 2 steps, 2 generations per prompt, two user rewards."""
    return RFModelConfig(
        model_name=model_dir,
        peft_config=RFLoraConfig(**LORA),
        reward_funcs=[answer_reward, format_reward],
        training_args=RFGRPOConfig(
            learning_rate=List([1e-3, 1e-4]),
            num_generations=2,
            per_device_train_batch_size=4,
            max_completion_length=6,
            max_steps=2,
            logging_steps=1,
            beta=0.0,
        ),
    )
