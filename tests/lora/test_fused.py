"""Many adapters in one forward/backward from a user's loop (`lora.fused`): each adapter's loss
and gradient equal its own forward on its own batch alone, for a PEFT model and for an
`inject_multi_lora` model; batches of different lengths and sizes pack together."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from rapidfire_core.demo.tiny_model import tiny_llama_config
from rapidfire_core.lora import (
    AdapterNotResident,
    add_lora_adapter,
    fused_adapters,
    inject_multi_lora,
    lora_adapter_parameters,
    lora_batch,
    pack_adapter_batches,
    per_adapter_losses,
    single_adapter_batch,
)
from rapidfire_core.lora.peft_segments import UnfusableAdapter

VOCAB = 97
CONFIGS = {
    "r4": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    "r8": LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False),
    "r16": LoraConfig(r=16, lora_alpha=16, target_modules=["o_proj", "down_proj"], init_lora_weights=False),
}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """The model runs in fp64 but the loss in fp32 (as Hugging Face's): both sides may round a
    logit to a neighbouring fp32 value (eps 1.2e-7); sums over ~40 tokens grow that to ~1e-6.
    A wrong adapter or mask is off by O(1) relative."""
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def _base():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(VOCAB, hidden_size=32)).double()


def _batches() -> dict[str, torch.Tensor]:
    """Different sequence counts and lengths per adapter (the packer pads them)."""
    gen = torch.Generator().manual_seed(1)
    shapes = {"r4": (2, 7), "r8": (3, 5), "r16": (1, 9)}
    return {n: torch.randint(1, VOCAB, shape, generator=gen) for n, shape in shapes.items()}


def _peft_model():
    peft = None
    for name, config in CONFIGS.items():
        if peft is None:
            peft = get_peft_model(_base(), copy.deepcopy(config), adapter_name=name)
        else:
            peft.add_adapter(name, copy.deepcopy(config))
    return peft.double().train()


def _grads(model, name: str) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if f".{name}." in k and p.grad is not None}


def _fused_step(model, batches: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One forward/backward of every adapter's batch; returns the per-adapter losses."""
    model.zero_grad()
    packed = pack_adapter_batches(batches, pad_token_id=0)
    with fused_adapters(model, packed.lora):
        logits = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask).logits
        losses = per_adapter_losses(logits, packed.labels, packed.lora)
        sum(losses.values()).backward()
    return losses


def test_pack_pads_right_and_labels_only_tokens():
    batches = _batches()
    packed = pack_adapter_batches(batches, pad_token_id=0)
    assert packed.input_ids.shape == (6, 9)
    assert packed.lora.per_sequence and packed.lora.segment_rows == (2, 3, 1)
    assert packed.sequences == {"r4": slice(0, 2), "r8": slice(2, 5), "r16": slice(5, 6)}
    assert torch.equal(packed.input_ids[2:5, :5], batches["r8"])
    assert (packed.input_ids[2:5, 5:] == 0).all() and (packed.attention_mask[2:5, 5:] == 0).all()
    assert (packed.labels[2:5, 5:] == -100).all() and torch.equal(packed.labels[2:5, :5], batches["r8"])


def test_peft_adapters_train_in_one_pass_as_each_alone():
    model = _peft_model()
    batches = _batches()
    solo_loss, solo_grads = {}, {}
    for name, ids in batches.items():
        model.set_adapter(name)  # PEFT: this adapter only, trainable
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        solo_loss[name], solo_grads[name] = loss.detach(), _grads(model, name)

    model.set_adapter("r4")  # only r4 is trainable now, as PEFT leaves it
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    losses = _fused_step(model, batches)
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    for name in batches:
        _close(losses[name].detach(), solo_loss[name])
        fused = _grads(model, name)
        assert fused.keys() == solo_grads[name].keys() and fused
        for key, grad in solo_grads[name].items():
            _close(fused[key], grad)


def test_inject_multi_lora_adapters_train_in_one_pass_as_each_alone():
    model = inject_multi_lora(_base(), CONFIGS, seed=0).train()
    batches = _batches()
    solo_loss, solo_grads = {}, {}
    for name, ids in batches.items():
        model.zero_grad()
        with lora_batch(single_adapter_batch(name, ids.numel())):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        solo_loss[name] = loss.detach()
        solo_grads[name] = {k: p.grad.clone() for k, p in lora_adapter_parameters(model, name).items()}
    losses = _fused_step(model, batches)
    for name in batches:
        _close(losses[name].detach(), solo_loss[name])
        for key, p in lora_adapter_parameters(model, name).items():
            _close(p.grad, solo_grads[name][key])


def test_an_integer_seed_gives_each_adapter_its_own_init():
    same = {"a": CONFIGS["r4"], "b": CONFIGS["r4"]}
    model = inject_multi_lora(_base(), same, seed=3)
    a = lora_adapter_parameters(model, "a")
    b = lora_adapter_parameters(model, "b")
    key_a = next(k for k in a if ".lora_A." in k)
    assert not torch.equal(a[key_a], b[key_a.replace(".a.", ".b.")])
    alone = lora_adapter_parameters(add_lora_adapter_alone(same["b"], seed=4), "b")
    assert all(torch.equal(b[k], alone[k]) for k in b)


def add_lora_adapter_alone(config, seed):
    model = _base()
    add_lora_adapter(model, "b", config, seed=seed)
    return model


def test_unknown_and_unfusable_adapters_are_named():
    model = _peft_model()
    packed = pack_adapter_batches({"nope": torch.ones(1, 3, dtype=torch.long)}, pad_token_id=0)
    with pytest.raises(ValueError, match="nope"), fused_adapters(model, packed.lora):
        pass
    model.add_adapter("dora", LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    packed = pack_adapter_batches({"dora": torch.ones(1, 3, dtype=torch.long)}, pad_token_id=0)
    with pytest.raises(UnfusableAdapter, match="dora"), fused_adapters(model, packed.lora):
        pass


def test_a_forward_through_an_evicted_adapter_says_so():
    pytest.importorskip("rapidfire_core._C", reason="the state pool needs the compiled module (make install)")
    from rapidfire_core.memory import StatePool, run_state_refs

    model = inject_multi_lora(_base(), CONFIGS, seed=0)
    pool = StatePool("cpu", 1 << 22)
    pool.put("r8", run_state_refs(model, "r8", None))
    pool.evict("r8")
    packed = pack_adapter_batches(_batches(), pad_token_id=0)
    with pytest.raises(AdapterNotResident, match="r8"), fused_adapters(model, packed.lora):
        model(input_ids=packed.input_ids)
    pool.acquire("r8")
    with fused_adapters(model, packed.lora):
        assert torch.isfinite(model(input_ids=packed.input_ids).logits).all()
