"""create_model is called once per distinct base model; runs on one base share it."""

from __future__ import annotations

import torch

from rapidfire_core import Experiment
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.demo.data import formatting_function, support_dataset


def test_one_create_model_call_per_base_model(tmp_path, tiny_model_dir, create_tiny_model):
    created = []

    def create_model(model_config):
        model, tokenizer = create_tiny_model(model_config)
        created.append((model_config["model_kwargs"].get("attn_implementation"), model))
        return model, tokenizer

    def config(model_kwargs, lrs):
        return RFModelConfig(
            model_name=tiny_model_dir,
            model_kwargs=model_kwargs,
            peft_config=List(
                [
                    RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]),
                    RFLoraConfig(r=8, lora_alpha=8, target_modules=["v_proj"]),
                ]
            ),
            training_args=RFSFTConfig(
                learning_rate=List(lrs), max_steps=2, per_device_train_batch_size=2, max_length=64
            ),
            formatting_func=formatting_function,
        )

    configs = List([config({}, [1e-3, 1e-4]), config({"attn_implementation": "eager"}, [1e-3])])
    exp = Experiment("shared", experiment_path=tmp_path, verbose=False)
    exp.run_fit(RFGridSearch(configs, trainer_type="SFT"), create_model, support_dataset(n=8), num_chunks=2)
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED"] * 6
    assert [kwarg for kwarg, _ in created] == [None, "eager"]  # 6 runs, 2 bases, 2 calls
    # the 4 runs of the first base live on it as 4 named adapters
    first_base = created[0][1]
    assert sorted(first_base.peft_config) == ["run_1", "run_2", "run_3", "run_4"]
    exp.end()


def test_full_fine_tuning_run_beside_lora_runs(tmp_path, tiny_model_dir, create_tiny_model):
    from transformers import AutoModelForCausalLM

    def config(peft_config):
        return RFModelConfig(
            model_name=tiny_model_dir,
            peft_config=peft_config,
            training_args=RFSFTConfig(
                learning_rate=1e-3, max_steps=2, per_device_train_batch_size=2, max_length=64
            ),
            formatting_func=formatting_function,
        )

    configs = List([config(None), config(RFLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))])
    exp = Experiment("full-ft", experiment_path=tmp_path, verbose=False)
    exp.run_fit(
        RFGridSearch(configs, trainer_type="SFT"), create_tiny_model, support_dataset(n=8), num_chunks=2
    )
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED", "COMPLETED"]
    trained = AutoModelForCausalLM.from_pretrained(str(exp.path / "runs" / "1" / "model"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # every weight of the full fine-tuning run moved; the LoRA run's base was not touched by it
    assert not torch.equal(
        trained.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
    )
    assert (exp.path / "runs" / "2" / "adapter" / "adapter_model.safetensors").exists()
    exp.end()
