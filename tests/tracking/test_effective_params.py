"""A run's params: the values it used, the typed ones where they differ."""

from __future__ import annotations

import torch

from rapidfire_core.automl import RFDPOConfig, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.automl.translate import assume_gpu
from rapidfire_core.tracking.effective_params import run_params, spec_params


def test_knobs_take_the_used_value_and_keep_the_typed_one_where_it_differs():
    class Args:
        fp16 = False
        learning_rate = 1e-3
        gradient_checkpointing_kwargs = {"use_reentrant": True}
        warmup_steps = 0.1
        use_cpu = True

    knobs = {
        "model_name": "m",
        "train.fp16": True,
        "train.learning_rate": 1e-3,
        "train.warmup_ratio": 0.1,
        "train.gradient_checkpointing_kwargs.use_reentrant": False,
        "model_kwargs.torch_dtype": "auto",
        "model_kwargs.load_in_4bit": True,
    }
    params = run_params(
        knobs,
        Args(),
        translated_fields=["fp16", "learning_rate", "warmup_steps", "use_cpu"],
        typed_model_kwargs={"torch_dtype": "auto", "load_in_4bit": True},
        used_model_kwargs={"torch_dtype": torch.float32},
    )
    assert params == {
        "model_name": "m",
        "train.fp16": False,
        "typed.train.fp16": True,
        "train.learning_rate": 1e-3,
        "train.warmup_ratio": 0.1,  # a legacy field: as typed; its new name follows
        "train.gradient_checkpointing_kwargs.use_reentrant": True,
        "typed.train.gradient_checkpointing_kwargs.use_reentrant": False,
        "model_kwargs.torch_dtype": "torch.float32",
        "typed.model_kwargs.torch_dtype": "auto",
        "model_kwargs.load_in_4bit": "dropped",
        "typed.model_kwargs.load_in_4bit": True,
        "train.warmup_steps": 0.1,
        "train.use_cpu": True,
    }


def test_spec_params_of_a_cpu_run_record_the_fallbacks(tmp_path):
    config = RFModelConfig(
        model_name="m",
        peft_config=RFLoraConfig(r=4),
        training_args=RFDPOConfig(
            bf16=True, optim="paged_adamw_8bit", max_prompt_length=8, max_completion_length=8
        ),
        model_kwargs={"torch_dtype": torch.bfloat16},
    )
    (spec,) = RFGridSearch(config, trainer_type="DPO").expand()
    with assume_gpu(False):
        args = spec.training_args(output_dir=str(tmp_path), report_to="none")
        params = spec_params(spec, spec.knobs, args)
    assert (params["train.bf16"], params["typed.train.bf16"]) == (False, True)
    assert (params["train.optim"], params["typed.train.optim"]) == ("adamw_torch", "paged_adamw_8bit")
    assert params["train.max_length"] == 16  # the legacy lengths' translation
    assert params["model_kwargs.torch_dtype"] == "torch.float32"
    assert params["typed.model_kwargs.torch_dtype"] == "torch.bfloat16"


def test_values_that_were_used_as_typed_have_no_typed_twin(tmp_path):
    (spec,) = RFGridSearch(
        RFModelConfig(model_name="m", training_args=RFSFTConfig(learning_rate=1e-4, max_steps=3)),
        trainer_type="SFT",
    ).expand()
    with assume_gpu(False):
        params = spec_params(spec, spec.knobs, spec.training_args(output_dir=str(tmp_path), report_to="none"))
    assert params["train.learning_rate"] == 1e-4 and params["train.max_steps"] == 3
    assert not [k for k in params if k.startswith("typed.")]


def test_legacy_fields_the_translation_dropped_are_recorded_as_dropped():
    from rapidfire_core.automl import RFDPOConfig, RFGridSearch, RFLoraConfig, RFModelConfig
    from rapidfire_core.tracking.effective_params import spec_params

    config = RFModelConfig(
        model_name="m",
        peft_config=RFLoraConfig(r=4),
        training_args=RFDPOConfig(max_prompt_length=512, max_completion_length=512, max_length=1024,
                                  model_adapter_name="default", ref_adapter_name="reference",
                                  warmup_ratio=0.1),
    )  # fmt: skip
    (spec,) = RFGridSearch(config, trainer_type="DPO").expand()
    args = spec.training_args(output_dir="/tmp/unused")
    params = spec_params(spec, spec.knobs, args)
    for field, typed in (("max_prompt_length", 512), ("model_adapter_name", "default"),
                         ("ref_adapter_name", "reference")):  # fmt: skip
        assert params[f"train.{field}"] == "dropped" and params[f"typed.train.{field}"] == typed
    assert params["train.warmup_ratio"] == 0.1 and "typed.train.warmup_ratio" not in params  # carried over
    assert params["train.max_length"] == 1024
