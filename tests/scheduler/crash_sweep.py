"""The experiment the crash-resume tests kill and continue: run as a script (the process that
dies) and imported (the process that continues it, and the uninterrupted reference).

    python -m tests.scheduler.crash_sweep ROOT NAME MODEL_DIR {sft|dpo} [{sliced|auto}]
"""

from __future__ import annotations

import sys

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFDPOConfig, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, preference_dataset, support_dataset

NUM_CHUNKS, SEED = 4, 42


def create_model(model_config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_config["model_name"])
    tokenizer = AutoTokenizer.from_pretrained(model_config["model_name"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def sft_group(model_dir: str) -> RFGridSearch:
    # Two configs with dropout (the RNG streams must survive), 12 steps of 2 rows over 4 chunks
    # of 16 rows: 6 chunks each, into a reshuffled second epoch; one accumulates gradients.
    common = dict(per_device_train_batch_size=2, logging_steps=1, max_length=96, max_steps=12)
    configs = List([
        RFModelConfig(
            model_name=model_dir,
            peft_config=RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
            training_args=RFSFTConfig(learning_rate=1e-3, seed=7, lr_scheduler_type="cosine", warmup_steps=2,
                                      **common),
            formatting_func=formatting_function,
        ),
        RFModelConfig(
            model_name=model_dir,
            peft_config=RFLoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["q_proj", "o_proj"]),
            training_args=RFSFTConfig(learning_rate=5e-4, seed=11, gradient_accumulation_steps=2,
                                      **(common | {"max_steps": 6})),
            formatting_func=formatting_function,
        ),
    ])  # fmt: skip
    return RFGridSearch(configs, trainer_type="SFT")


def dpo_group(model_dir: str) -> RFGridSearch:
    config = RFModelConfig(
        model_name=model_dir,
        peft_config=RFLoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
        training_args=RFDPOConfig(beta=0.1, learning_rate=5e-3, max_steps=6, per_device_train_batch_size=2,
                                  max_length=64, logging_steps=1, seed=3),
    )  # fmt: skip
    return RFGridSearch(config, trainer_type="DPO")


def run(
    root: str,
    name: str,
    model_dir: str,
    kind: str,
    execution: str = "sliced",
    exp: Experiment | None = None,
    **fit,
) -> Experiment:
    """The sweep, time-sliced unless `execution="fused"` (fused cohorts: see test_crash_resume);
    `exp`: run it on this Experiment (run_fit again on the same object) instead of a new one."""
    fit["execution"] = execution
    exp = exp or Experiment(name, experiment_path=root, verbose=False)
    if kind == "sft":
        exp.run_fit(sft_group(model_dir), create_model, support_dataset(n=16, seed=3), num_chunks=NUM_CHUNKS,
                    seed=SEED, **fit)  # fmt: skip
    else:
        exp.run_fit(
            dpo_group(model_dir),
            create_model,
            preference_dataset(n=12, seed=4),
            num_chunks=3,
            seed=SEED,
            **fit,
        )
    return exp


if __name__ == "__main__":
    root, name, model_dir, kind, *execution = sys.argv[1:]
    run(root, name, model_dir, kind, execution=execution[0] if execution else "sliced").end()
