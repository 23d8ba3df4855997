"""RFModelConfig: fields, validation, dict-like access, copy."""

from __future__ import annotations

import pytest

from rapidfire_core.automl import List, RFLoraConfig, RFModelConfig, RFSFTConfig
from rapidfire_core.errors import ConfigError


def test_fields_match_rapidfire_order_and_defaults():
    assert RFModelConfig.FIELDS == (
        "model_name",
        "tokenizer",
        "tokenizer_kwargs",
        "formatting_func",
        "compute_metrics",
        "peft_config",
        "training_args",
        "model_type",
        "model_kwargs",
        "ref_model_name",
        "ref_model_type",
        "ref_model_kwargs",
        "reward_funcs",
        "generation_config",
        "num_gpus",
        "callbacks",  # ours, after RapidFire AI's fields (TRL trainer callbacks, issue 8)
    )
    mc = RFModelConfig("m")  # model_name is the first positional parameter
    assert mc.model_name == "m" and mc.model_type == "causal_lm" and mc.peft_config is None


def test_getitem_and_to_dict_for_create_model():
    mc = RFModelConfig(model_name="m", model_kwargs={"torch_dtype": "auto"})
    assert mc["model_name"] == "m" and mc["model_type"] == "causal_lm"
    assert mc["model_kwargs"] == {"torch_dtype": "auto"}
    assert mc["tokenizer_kwargs"] == {}  # None kwargs can be **-splatted
    assert set(mc.to_dict()) == set(RFModelConfig.FIELDS)
    assert "model_name" in mc and mc.get("nope", 5) == 5
    with pytest.raises(KeyError):
        mc["nope"]


def test_unknown_and_mistyped_fields():
    with pytest.raises(
        ConfigError, match="RFModelConfig: unknown field 'model_kwarg'; did you mean 'model_kwargs'"
    ):
        RFModelConfig(model_name="m", model_kwarg={})
    with pytest.raises(ConfigError, match="RFModelConfig.model_kwargs: expected dict"):
        RFModelConfig(model_name="m", model_kwargs=["device_map"])
    with pytest.raises(ConfigError, match="RFModelConfig.peft_config: expected LoraConfig"):
        RFModelConfig(model_name="m", peft_config={"r": 8})
    with pytest.raises(ConfigError, match="RFModelConfig.model_name"):
        RFModelConfig(model_name=List(["a", 3]))
    mc = RFModelConfig(model_name="m")
    with pytest.raises(ConfigError, match="did you mean 'peft_config'"):
        mc.peft_cfg = None


def test_any_field_may_hold_a_list_and_copy_is_deep():
    loras = List([RFLoraConfig(r=8), RFLoraConfig(r=32)])
    mc = RFModelConfig(
        model_name=List(["a", "b"]),
        peft_config=loras,
        training_args=RFSFTConfig(max_steps=2),
        model_kwargs={"torch_dtype": List(["float32", "bfloat16"])},
    )
    c = mc.copy()
    c.training_args.max_steps = 9
    c.peft_config.values[0].r = 4
    assert mc.training_args.max_steps == 2 and mc.peft_config.values[0].r == 8
    assert "model_kwargs" in repr(mc) and "tokenizer" not in repr(mc)
