"""The fused forward over a PEFT model's own adapters equals each adapter's own PEFT forward."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from rapidfire_core.demo.tiny_model import tiny_llama_config
from rapidfire_core.lora.context import LoraBatch, lora_batch
from rapidfire_core.lora.peft_segments import (
    UnfusableAdapter,
    check_fusable,
    segment_forward,
    switch_active_adapter,
)


def _peft_model(dtype=torch.float64):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(97, hidden_size=32)).to(dtype)
    configs = {
        "a": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        "b": LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False),
        "c": LoraConfig(
            r=2, lora_alpha=2, target_modules=["o_proj"], use_rslora=True, init_lora_weights=False
        ),
    }
    peft = None
    for name, config in configs.items():
        if peft is None:
            peft = get_peft_model(model, config, adapter_name=name)
        else:
            peft.add_adapter(name, config)
    return peft.to(dtype), list(configs)


def _adapter_grads(model, name):
    return {n: p.grad.clone() for n, p in model.named_parameters() if f".{name}." in n and p.grad is not None}


def test_segment_forward_equals_each_adapters_peft_forward():
    model, names = _peft_model()
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    ids = {n: torch.randint(0, 97, (b, 7)) for n, b in zip(names, (2, 3, 1), strict=True)}

    solo_logits, solo_grads = {}, {}
    for name in names:
        model.set_adapter(name)
        model.zero_grad()
        out = model(input_ids=ids[name]).logits
        out.square().sum().backward()
        solo_logits[name] = out.detach()
        solo_grads[name] = _adapter_grads(model, name)

    for _, p in model.named_parameters():
        p.requires_grad_(True)
    model.zero_grad()
    batch = LoraBatch([(n, ids[n].numel()) for n in names])
    with segment_forward(model), lora_batch(batch):
        logits = model(input_ids=torch.cat([ids[n] for n in names])).logits
        logits.square().sum().backward()
    start = 0
    for name in names:
        rows = ids[name].shape[0]
        torch.testing.assert_close(
            logits[start : start + rows].detach(), solo_logits[name], rtol=1e-10, atol=1e-10
        )
        fused = _adapter_grads(model, name)
        assert fused.keys() == solo_grads[name].keys() and fused
        for key, grad in solo_grads[name].items():
            torch.testing.assert_close(fused[key], grad, rtol=1e-9, atol=1e-10)
        start += rows


def test_outside_segment_forward_peft_computes_as_usual():
    model, _ = _peft_model()
    model.set_adapter("b")
    ids = torch.randint(0, 97, (2, 5))
    before = model(input_ids=ids).logits
    with segment_forward(model):
        pass
    batch = LoraBatch([("b", ids.numel())])
    with lora_batch(batch):  # a batch alone (no segment_forward) changes nothing
        torch.testing.assert_close(model(input_ids=ids).logits, before)
    with segment_forward(model):  # no batch: the base model, as with PEFT's disable_adapter()
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, base)


def test_unfusable_adapters_are_named():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(97, hidden_size=32))
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True), adapter_name="d")
    with pytest.raises(UnfusableAdapter, match="DoRA"):
        check_fusable(peft, "d")


def test_adapters_with_modules_to_save_do_not_fuse():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(97, hidden_size=32))
    config = LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    peft = get_peft_model(model, config, adapter_name="m")
    with pytest.raises(UnfusableAdapter, match="modules_to_save"):
        check_fusable(peft, "m")


def test_switching_the_active_adapter_computes_as_peft_set_adapter():
    """The fast switch of a fused member's hand-off: PEFT's forward then uses that adapter, as
    after `set_adapter`; adapters added later (on other targets too) are covered."""
    model, _ = _peft_model()
    model.add_adapter("d", LoraConfig(r=3, target_modules=["o_proj", "up_proj"], init_lora_weights=False))
    ids = torch.randint(0, 97, (2, 7))
    for name in ("a", "b", "c", "d", "a"):
        model.set_adapter(name)
        want = model(input_ids=ids).logits
        model.set_adapter("b" if name != "b" else "a")
        switch_active_adapter(model, name)
        assert model.active_adapter == name
        torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=0, atol=0)
