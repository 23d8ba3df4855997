"""The seeds' configurations, field for field, shared by the automl and engine tests.

`cookbook_sft_configs` is seed 002's `config_set_lite` (2 learning rates x 2 LoRA configs);
`blog_dpo_config` / `blog_lora_config` are seed 000's `base_dpo_config` / `base_lora_config`.
Only sizes can be overridden (steps, accumulation, generation length) so CPU tests stay short.
"""

from __future__ import annotations

from collections.abc import Callable

from peft import TaskType

from rapidfire_core.automl import List, RFDPOConfig, RFLoraConfig, RFModelConfig, RFSFTConfig


def cookbook_sft_configs(
    model_name: str,
    formatting_func: Callable,
    *,
    max_steps: int = 128,
    compute_metrics: Callable | None = None,
    max_new_tokens: int = 256,
) -> List:
    peft_configs_lite = List(
        [
            RFLoraConfig(
                r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], bias="none"
            ),
            RFLoraConfig(
                r=32,
                lora_alpha=64,
                lora_dropout=0.1,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                bias="none",
            ),
        ]
    )

    def config(lr: float) -> RFModelConfig:
        return RFModelConfig(
            model_name=model_name,
            peft_config=peft_configs_lite,
            training_args=RFSFTConfig(
                learning_rate=lr,
                lr_scheduler_type="linear",
                per_device_train_batch_size=4,
                per_device_eval_batch_size=4,
                max_steps=max_steps,
                gradient_accumulation_steps=1,
                logging_steps=2,
                eval_strategy="steps",
                eval_steps=4,
                fp16=True,
            ),
            model_type="causal_lm",
            model_kwargs={"device_map": "auto", "torch_dtype": "auto", "use_cache": False},
            formatting_func=formatting_func,
            compute_metrics=compute_metrics,
            generation_config={
                "max_new_tokens": max_new_tokens,
                "temperature": 0.8,
                "top_p": 0.9,
                "top_k": 30,
                "repetition_penalty": 1.05,
            },
        )

    return List([config(1e-3), config(1e-4)])


def blog_lora_config() -> RFLoraConfig:
    return RFLoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=64,
        lora_alpha=64,
        lora_dropout=0.1,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        bias="none",
    )


def blog_dpo_config(*, gradient_accumulation_steps: int = 8) -> RFDPOConfig:
    return RFDPOConfig(
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
        model_adapter_name="default",
        ref_adapter_name="reference",
        force_use_ref_model=False,
        loss_type="sigmoid",
        beta=0.1,
        max_prompt_length=512,
        max_completion_length=512,
        max_length=1024,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=5e-5,
        optim="paged_adamw_8bit",
        num_train_epochs=1,
        logging_steps=1,
        warmup_ratio=0.1,
        lr_scheduler_type="cosine",
        save_strategy="no",
        output_dir="./output",
    )
