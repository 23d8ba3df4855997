"""The seeds' notebooks run with only the import changed.

Field for field the configs of the SFT cookbook (seed 002) and the DPO blog (seed 000),
GPU-only settings included (fp16, bf16 weights, paged 8-bit Adam, device_map="auto") and the
fields today's TRL no longer has (warmup_ratio, max_prompt_length, adapter names). Only the
model, the data and the step counts are shrunk to fit a CPU test.
"""

from __future__ import annotations

import warnings

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFModelConfig
from rapidfire_core.demo.data import preference_dataset, support_dataset
from tests.seed_configs import blog_dpo_config, blog_lora_config, cookbook_sft_configs


def sample_formatting_function(row):
    SYSTEM_PROMPT = "You are a helpful and friendly customer support assistant."
    return {
        "prompt": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row["instruction"]},
        ],
        "completion": [{"role": "assistant", "content": row["response"]}],
    }


def sample_compute_metrics(eval_preds):
    predictions, labels = eval_preds
    overlap = [
        len(set(p.split()) & set(lbl.split())) / max(1, len(set(lbl.split())))
        for p, lbl in zip(predictions, labels, strict=True)
    ]
    return {"word_recall": round(sum(overlap) / len(overlap), 4), "n_predictions": len(predictions)}


def sample_create_model(model_config):
    model_name = model_config["model_name"]
    model = AutoModelForCausalLM.from_pretrained(model_name, **model_config["model_kwargs"])
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    return (model, tokenizer)


def test_sft_cookbook_runs_with_only_the_import_changed(tmp_path, tiny_model_dir):
    train_dataset = support_dataset(n=16, seed=0).shuffle(seed=42)
    eval_dataset = support_dataset(n=4, seed=5)
    config_set_lite = cookbook_sft_configs(
        tiny_model_dir,
        sample_formatting_function,
        max_steps=4,
        compute_metrics=sample_compute_metrics,
        max_new_tokens=8,
    )
    experiment = Experiment(
        experiment_name="exp1-chatqa-lite", mode="fit", experiment_path=tmp_path, verbose=False
    )
    config_group = RFGridSearch(configs=config_set_lite, trainer_type="SFT")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        experiment.run_fit(
            config_group, sample_create_model, train_dataset, eval_dataset, num_chunks=4, seed=42
        )
    info = experiment.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"] * 4, info["error"].tolist()
    if not torch.cuda.is_available():
        assert any("fp16" in str(w.message) for w in caught)
    results = experiment.get_results()
    # a comparable eval after every chunk, with the user's generation metrics under their names
    assert results.groupby("run_id")["eval_loss"].count().min() == 4
    assert results["word_recall"].notna().any()
    assert (results["n_predictions"].dropna() == 4).all()
    experiment.end()


def test_dpo_blog_config_runs_with_only_the_import_changed(tmp_path, tiny_model_dir):
    train_dataset = preference_dataset(n=8, seed=0)
    experiment = Experiment(
        experiment_name="exp1-dpo-alignment", mode="fit", experiment_path=tmp_path, verbose=False
    )
    base_lora_config = blog_lora_config()
    base_dpo_config = blog_dpo_config(gradient_accumulation_steps=2)
    lora_config_1, dpo_config_1 = base_lora_config.copy(), base_dpo_config.copy()
    dpo_config_1.loss_type, dpo_config_1.beta = "sigmoid", 0.1
    lora_config_2, dpo_config_2 = base_lora_config.copy(), base_dpo_config.copy()
    lora_config_2.r = 32
    dpo_config_2.loss_type, dpo_config_2.beta = "robust", 0.1
    lora_config_3, dpo_config_3 = base_lora_config.copy(), base_dpo_config.copy()
    dpo_config_3.loss_type, dpo_config_3.beta = "sigmoid", 0.01

    def model_config(lora, dpo):
        return RFModelConfig(
            model_name=tiny_model_dir,
            ref_model_name=None,
            peft_config=lora,
            training_args=dpo,
            model_kwargs={"device_map": "auto", "torch_dtype": torch.bfloat16},
            tokenizer_kwargs={"model_max_length": 1024, "padding_side": "left", "truncation": True},
        )

    config_set = List(
        [
            model_config(lora_config_1, dpo_config_1),
            model_config(lora_config_2, dpo_config_2),
            model_config(lora_config_3, dpo_config_3),
        ]
    )

    def create_model(model_config):
        model = AutoModelForCausalLM.from_pretrained(
            model_config["model_name"], **model_config["model_kwargs"]
        )
        model.config.use_cache = False
        tokenizer = AutoTokenizer.from_pretrained(
            model_config["model_name"], **model_config["tokenizer_kwargs"]
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return (model, tokenizer)

    config_group = RFGridSearch(configs=config_set, trainer_type="DPO")
    experiment.run_fit(config_group, create_model, train_dataset, eval_dataset=None, num_chunks=4, seed=42)
    info = experiment.get_runs_info()
    assert info["status"].tolist() == ["COMPLETED"] * 3, info["error"].tolist()
    assert info["peft.r"].tolist() == [64, 32, 64]
    assert info["train.loss_type"].tolist() == ["sigmoid", "robust", "sigmoid"]
    results = experiment.get_results()
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(
        results.columns
    )
    # one epoch of 8 rows at 2 rows per step
    assert (results.groupby("run_id")["step"].max() == 4).all()
    experiment.end()
