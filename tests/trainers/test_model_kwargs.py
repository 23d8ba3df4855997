"""model_kwargs written for a GPU: translated for the machine, each change one warning line."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from rapidfire_core.automl.translate import assume_gpu
from rapidfire_core.errors import ConfigTranslationWarning
from rapidfire_core.trainers.model_kwargs import for_device, sixteen_bit_warning
from rapidfire_core.trainers.shared_models import ModelRegistry


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "bfloat16", "float16", "half", "auto"])
@pytest.mark.parametrize("key", ["torch_dtype", "dtype"])
def test_sixteen_bit_and_auto_dtypes_become_float32_on_cpu(key, dtype):
    typed = {key: dtype, "use_cache": False}
    kwargs, messages = for_device(typed, gpu=False)
    assert kwargs == {key: torch.float32, "use_cache": False}
    assert messages == [
        f"model_kwargs: {key}={dtype!r} -> torch.float32: no usable GPU (torch.cuda.is_available() is "
        "False); training runs in float32 on CPU (16-bit CPU kernels can be many times slower)"
    ]
    assert typed[key] == dtype  # the typed dict is left alone


def test_gpu_keeps_dtypes_and_turns_4bit_flags_into_a_quantization_config():
    kwargs, messages = for_device(
        {"torch_dtype": torch.bfloat16, "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, gpu=True
    )
    assert kwargs["torch_dtype"] is torch.bfloat16
    config = kwargs["quantization_config"]
    assert (
        isinstance(config, BitsAndBytesConfig) and config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    )
    assert set(kwargs) == {"torch_dtype", "quantization_config"}
    assert (
        len(messages) == 1 and "load_in_4bit=True -> quantization_config=BitsAndBytesConfig(" in messages[0]
    )


def test_cpu_drops_quantization_flags_with_a_warning():
    kwargs, messages = for_device({"load_in_8bit": True, "device_map": "auto"}, gpu=False)
    assert kwargs == {"device_map": "auto"}
    assert messages == [
        "model_kwargs: load_in_8bit=True dropped: no usable GPU (torch.cuda.is_available() is False); "
        "bitsandbytes quantization needs CUDA, so the model loads unquantized"
    ]


def test_false_flags_are_dropped_and_a_given_quantization_config_wins():
    kwargs, messages = for_device({"load_in_4bit": False}, gpu=True)
    assert kwargs == {} and "load_in_4bit=False dropped" in messages[0]
    own = BitsAndBytesConfig(load_in_8bit=True)
    kwargs, messages = for_device({"load_in_4bit": True, "quantization_config": own}, gpu=True)
    assert kwargs == {"quantization_config": own}
    assert messages == ["model_kwargs: load_in_4bit=True dropped: the quantization_config given is used"]


def test_float32_kwargs_pass_unchanged():
    typed = {"torch_dtype": torch.float32, "device_map": "auto"}
    assert for_device(typed, gpu=False) == (typed, [])


def test_sixteen_bit_warning_names_the_dtype(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert sixteen_bit_warning(model) is None
    assert "bfloat16 weights on a machine without a usable GPU" in sixteen_bit_warning(
        model.to(torch.bfloat16)
    )


def test_registry_hands_create_model_the_translated_kwargs_and_warns(tiny_model_dir):
    received = []

    def create_model(model_config):
        received.append(model_config["model_kwargs"])
        model = AutoModelForCausalLM.from_pretrained(
            model_config["model_name"], **model_config["model_kwargs"]
        )
        return model, AutoTokenizer.from_pretrained(model_config["model_name"])

    with assume_gpu(False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ModelRegistry(create_model)._create(
            {
                "model_name": tiny_model_dir,
                "model_kwargs": {"torch_dtype": torch.bfloat16, "load_in_4bit": True},
            }
        )
    assert received == [{"torch_dtype": torch.float32}]
    said = [str(w.message) for w in caught if issubclass(w.category, ConfigTranslationWarning)]
    assert len(said) == 2 and "torch_dtype=torch.bfloat16 -> torch.float32" in said[0]


def test_registry_warns_when_create_model_ignores_the_kwargs(tiny_model_dir):
    def create_model(model_config):  # loads in bfloat16 whatever it is given
        model = AutoModelForCausalLM.from_pretrained(model_config["model_name"], dtype=torch.bfloat16)
        return model, AutoTokenizer.from_pretrained(model_config["model_name"])

    with assume_gpu(False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ModelRegistry(create_model)._create({"model_name": tiny_model_dir, "model_kwargs": {}})
    said = [str(w.message) for w in caught if issubclass(w.category, ConfigTranslationWarning)]
    assert said == [
        "create_model returned a model with bfloat16 weights on a machine without a usable GPU: it trains in "
        "16 bits on CPU (16-bit CPU kernels can be many times slower, and results differ from float32); load "
        "it with the model_kwargs the engine passes (float32 here) or call model.float()"
    ]
