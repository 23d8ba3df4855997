"""Warm start keeps the parent's update of every weight: scale_c * B_c A_c == scale_p * B_p A_p."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from rapidfire_core.trainers.warm_start import WarmStart, capture_parent


def _delta(model, adapter, name):
    module = model.get_submodule(name)
    return module.scaling[adapter] * module.lora_B[adapter].weight @ module.lora_A[adapter].weight


@pytest.fixture
def two_adapters(tiny_model_dir):
    def make(parent_kw, clone_kw):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        model = get_peft_model(base, LoraConfig(**parent_kw), adapter_name="parent")
        model.add_adapter("clone", LoraConfig(**clone_kw))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B.parent" in name:
                    param.normal_()  # a trained parent: B is no longer zero
        return model

    return make


@pytest.mark.parametrize(
    "clone_kw, exact",
    [
        (dict(r=4, lora_alpha=8), True),  # same rank and scale: a copy
        (dict(r=4, lora_alpha=32), True),  # edited alpha: B rescaled
        (dict(r=8, lora_alpha=8), True),  # larger rank: extra components start at B = 0
        (dict(r=2, lora_alpha=2), False),  # smaller rank: the best rank-2 approximation
    ],
)
def test_the_parents_update_is_carried_over(two_adapters, clone_kw, exact):
    targets = ["q_proj", "v_proj"]
    model = two_adapters(
        dict(r=4, lora_alpha=8, target_modules=targets), dict(target_modules=targets, **clone_kw)
    )
    warm = WarmStart(1, capture_parent(model, "parent"))
    report = warm.apply_weights(model, "clone")
    assert len(report.copied) + len(report.resized) == 4 and not report.fresh and not report.dropped
    for name in [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "clone" in m.lora_A]:
        parent, clone = _delta(model, "parent", name), _delta(model, "clone", name)
        if exact:
            torch.testing.assert_close(clone, parent, rtol=1e-5, atol=1e-6)
        else:
            u, s, vh = torch.linalg.svd(parent.double())
            best = (u[:, :2] * s[:2]) @ vh[:2]
            torch.testing.assert_close(clone.double(), best, rtol=1e-4, atol=1e-5)


def test_layers_only_one_side_targets_are_reported(two_adapters):
    model = two_adapters(
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"]),
    )
    report = WarmStart(1, capture_parent(model, "parent")).apply_weights(model, "clone")
    assert all("q_proj" in n for n in report.copied) and all("o_proj" in n for n in report.fresh)
    assert report.dropped and all("v_proj" in n for n in report.dropped)


def test_snapshot_is_independent_of_later_parent_steps(two_adapters):
    model = two_adapters(
        dict(r=4, lora_alpha=8, target_modules=["q_proj"]), dict(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    layers = capture_parent(model, "parent")
    name = next(iter(layers))
    before = layers[name].B.clone()
    with torch.no_grad():
        model.get_submodule(name).lora_B["parent"].weight.add_(1.0)
    assert torch.equal(layers[name].B, before)
