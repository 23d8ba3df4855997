"""Injection into a tiny HF Llama: PEFT's module matching and init, and a fused step == each run alone."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from rapidfire_core.demo.tiny_model import build_tiny_llama
from rapidfire_core.lora import (
    LoraBatch,
    MultiLoraLinear,
    add_lora_adapter,
    inject_multi_lora,
    load_peft_adapter,
    lora_adapter_names,
    lora_adapter_parameters,
    lora_adapter_sets,
    lora_batch,
    multi_lora_layers,
    peft_adapter_state_dict,
    remove_lora_adapter,
    unload_multi_lora,
)
from rapidfire_core.ops import triton_kernels

CONFIGS = {
    "run-a": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    "run-b": LoraConfig(r=16, lora_alpha=16, use_rslora=True, target_modules="all-linear", task_type="CAUSAL_LM"),
    "run-c": LoraConfig(
        r=8, lora_alpha=4, target_modules=["o_proj", "down_proj"], layers_to_transform=[1],
        rank_pattern={"down_proj": 2}, task_type="CAUSAL_LM",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_llama():
    model, _ = build_tiny_llama(seed=0)
    return model.eval()


def _peft_lora_modules(model) -> dict[str, tuple[int, int]]:
    """{module name: (r, in_features)} of the LoRA layers PEFT created (names relative to the HF model)."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            out[name.removeprefix("base_model.model.")] = tuple(module.lora_A["default"].weight.shape)
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_targets_and_init_equal_peft(tiny_llama, name):
    config = CONFIGS[name]
    torch.manual_seed(11)
    peft_model = get_peft_model(copy.deepcopy(tiny_llama), copy.deepcopy(config))
    ours = copy.deepcopy(tiny_llama)
    add_lora_adapter(ours, name, config, seed=11)  # seeded: same draws as PEFT after manual_seed(11)
    want = _peft_lora_modules(peft_model)
    got = {n: tuple(layer.lora_A[name].weight.shape) for n, layer in multi_lora_layers(ours).items()}
    assert got == want
    peft_params = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    ours_params = lora_adapter_parameters(ours, name)
    assert len(peft_params) == len(ours_params)
    for (pn, pp), (on, op) in zip(peft_params.items(), ours_params.items(), strict=True):
        assert pn.replace(".default.", f".{name}.").endswith(on), (pn, on)
        assert torch.equal(pp, op), on
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == set(ours_params)


def test_seeded_add_leaves_the_callers_rng_alone(tiny_llama):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    add_lora_adapter(copy.deepcopy(tiny_llama), "run-a", CONFIGS["run-a"], seed=5)
    assert torch.equal(torch.rand(3), expected)


def fused_vs_alone(tiny_llama, backend, device="cpu"):
    """One fused forward/backward of three runs (+ a no-adapter row) == each run alone in PEFT."""
    base = copy.deepcopy(tiny_llama).to(device)
    fused = inject_multi_lora(copy.deepcopy(base), CONFIGS, seed=1)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-zero B so each adapter changes the logits and gets real gradients
        for name in CONFIGS:
            for key, p in lora_adapter_parameters(fused, name).items():
                if ".lora_B." in key:
                    p.copy_(torch.randn(p.shape, generator=gen).to(device) * 0.1)
    seq = 6
    ids = {n: torch.randint(0, 500, (2, seq), generator=gen).to(device) for n in CONFIGS}
    ids_none = torch.randint(0, 500, (1, seq), generator=gen).to(device)
    input_ids = torch.cat([ids["run-a"], ids["run-b"], ids_none, ids["run-c"]])
    batch = LoraBatch(
        [("run-a", 2 * seq), ("run-b", 2 * seq), (None, seq), ("run-c", 2 * seq)],
        device,
        adapter_sets=lora_adapter_sets(fused),
    )
    with triton_kernels(backend == "triton"), lora_batch(batch):
        logits = fused(input_ids=input_ids).logits  # (7, seq, vocab)
    rows = {"run-a": slice(0, 2), "run-b": slice(2, 4), None: slice(4, 5), "run-c": slice(5, 7)}
    # Per run: its own loss on its own rows; the sum trains every run at once.
    with triton_kernels(backend == "triton"):
        sum(logits[rows[n]].float().logsumexp(-1).mean() for n in CONFIGS).backward()
    # Each run alone, through plain PEFT with the same weights.
    for name, config in CONFIGS.items():
        peft_model = get_peft_model(copy.deepcopy(base), copy.deepcopy(config))
        state = peft_adapter_state_dict(fused, name)
        peft_params = dict(peft_model.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                peft_params[key.replace(".weight", ".default.weight")].copy_(value)
        alone = peft_model(input_ids=ids[name]).logits
        torch.testing.assert_close(logits[rows[name]], alone, rtol=2e-5, atol=2e-5)
        alone.float().logsumexp(-1).mean().backward()
        ours = lora_adapter_parameters(fused, name)
        for key, p in ours.items():
            peft_key = "base_model.model." + key.replace(f".{name}.", ".default.")
            torch.testing.assert_close(p.grad, peft_params[peft_key].grad, rtol=1e-4, atol=1e-6, msg=key)
    with torch.no_grad():  # the no-adapter row is the plain base model
        torch.testing.assert_close(logits[rows[None]], base(input_ids=ids_none).logits, rtol=2e-5, atol=2e-5)


def test_fused_step_equals_each_run_alone_in_peft(tiny_llama):
    fused_vs_alone(tiny_llama, "torch")


def test_fused_step_on_triton_kernels_equals_peft(tiny_llama, kernel_device):
    fused_vs_alone(tiny_llama, "triton", kernel_device)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("use_dora", True, "DoRA"),
        ("modules_to_save", ["lm_head"], "modules_to_save"),
        ("bias", "all", "bias"),
        ("init_lora_weights", "pissa", "init_lora_weights"),
        ("target_modules", ["mlp"], "Linear layers only"),
        ("target_modules", ["nonexistent"], "matches no module"),
    ],
)
def test_unsupported_configs_name_the_field(tiny_llama, field, value, match):
    config = copy.deepcopy(CONFIGS["run-a"])
    setattr(config, field, value)
    with pytest.raises(ValueError, match=match):
        add_lora_adapter(copy.deepcopy(tiny_llama), "x", config)


def test_remove_and_unload_restore_the_base(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    q_before = model.model.layers[0].self_attn.q_proj
    inject_multi_lora(model, CONFIGS)
    assert isinstance(model.model.layers[0].self_attn.q_proj, MultiLoraLinear)
    assert lora_adapter_names(model) == list(CONFIGS)
    assert lora_adapter_sets(model) >= {("run-a", "run-b"), ("run-b",)}
    remove_lora_adapter(model, "run-a")
    assert "run-a" not in model.model.layers[0].self_attn.q_proj.specs
    with pytest.raises(ValueError, match="already exists"):
        add_lora_adapter(model, "run-b", CONFIGS["run-b"])
    unload_multi_lora(model)
    assert model.model.layers[0].self_attn.q_proj is q_before
    assert not any(isinstance(m, MultiLoraLinear) for m in model.modules())
    assert type(model.lm_head) is nn.Linear


def test_adding_a_run_to_an_injected_model(tiny_llama):
    """Clone-modify / warm start: a later run lands on the existing wrappers, never on their children."""
    model = inject_multi_lora(copy.deepcopy(tiny_llama), {"run-a": CONFIGS["run-a"]})
    targets = load_peft_adapter(
        model, "run-a2", peft_adapter_state_dict(model, "run-a"), config=CONFIGS["run-a"]
    )
    assert all(not t.endswith(("base_layer", "lora_A", "lora_B")) for t in targets)
    for key, p in lora_adapter_parameters(model, "run-a2").items():
        assert torch.equal(p, lora_adapter_parameters(model, "run-a")[key.replace("run-a2", "run-a")])
