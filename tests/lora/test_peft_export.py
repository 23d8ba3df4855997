"""One run's adapter out to PEFT's on-disk format (and back): loads with plain PEFT, same logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from rapidfire_core.lora import (
    inject_multi_lora,
    load_peft_adapter,
    lora_adapter_parameters,
    lora_batch,
    save_peft_adapter,
    single_adapter_batch,
)

CONFIGS = {
    "run-a": LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    ),
    "run-b": LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
}


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    """A tiny Llama with two runs whose B matrices are non-zero (as if trained)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    inject_multi_lora(model, CONFIGS, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in CONFIGS:
            for p in lora_adapter_parameters(model, name).values():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


@pytest.mark.parametrize("name", CONFIGS)
def test_saved_adapter_loads_in_plain_peft(trained, tiny_model_dir, tmp_path, name):
    from transformers import AutoModelForCausalLM

    path = save_peft_adapter(trained, name, tmp_path / name)
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["r"] == CONFIGS[name].r and config["peft_type"] == "LORA"
    assert config["base_model_name_or_path"] == tiny_model_dir
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(path)).eval()
    ids = torch.randint(0, 500, (2, 9), generator=torch.Generator().manual_seed(2))
    with lora_batch(single_adapter_batch(name, ids.numel())):
        ours = trained(input_ids=ids).logits
    torch.testing.assert_close(ours, loaded(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_saved_keys_equal_peft_save_pretrained(trained, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    save_peft_adapter(trained, "run-b", tmp_path / "ours")
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), copy.deepcopy(CONFIGS["run-b"])
    )
    peft_model.save_pretrained(str(tmp_path / "peft"))
    ours = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    theirs = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype for k in ours)


def test_load_peft_adapter_round_trip(trained, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    path = save_peft_adapter(trained, "run-a", tmp_path / "a")
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    load_peft_adapter(fresh, "warm", path)
    for key, p in lora_adapter_parameters(fresh, "warm").items():
        assert torch.equal(p, lora_adapter_parameters(trained, "run-a")[key.replace(".warm.", ".run-a.")])
    with pytest.raises(ValueError, match="needs its LoraConfig"):
        load_peft_adapter(fresh, "x", {})
