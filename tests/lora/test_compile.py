"""torch.compile(fullgraph=True) of a MultiLoraLinear: no graph break, same forward and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rapidfire_core.lora import LoraBatch, MultiLoraLinear, lora_batch


def _layer(dropout: float) -> MultiLoraLinear:
    torch.manual_seed(0)
    layer = MultiLoraLinear(nn.Linear(32, 24))
    layer.add_adapter("a", r=4, lora_alpha=8, lora_dropout=dropout)
    layer.add_adapter("b", r=16, lora_alpha=8)
    with torch.no_grad():
        for p in layer.lora_B.parameters():
            p.normal_()
    return layer


def _step(fn, layer, x, batch):
    x = x.clone().requires_grad_()
    with lora_batch(batch):
        out = fn(x)
    params = [*layer.lora_A.parameters(), *layer.lora_B.parameters()]
    return out, torch.autograd.grad(out.square().sum(), [x, *params])


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_compiled_layer_equals_eager(backend):
    torch._dynamo.reset()
    layer = _layer(dropout=0.0)
    batch = LoraBatch([("a", 5), (None, 3), ("b", 6)], adapter_sets=[layer.adapter_names])
    x = torch.randn(2, 7, 32)
    eager_out, eager_grads = _step(layer, layer, x, batch)
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    out, grads = _step(compiled, layer, x, batch)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_compiled_layer_with_dropout_has_no_graph_break():
    """The keep mask is drawn inside the graph; fullgraph=True would raise on a break."""
    torch._dynamo.reset()
    layer = _layer(dropout=0.5).train()
    batch = LoraBatch([("a", 8), ("b", 6)], adapter_sets=[layer.adapter_names])
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out, grads = _step(compiled, layer, torch.randn(14, 32), batch)
    assert out.shape == (14, 24) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_layer_on_the_registered_ops(kernel_device, backend):
    """The Triton path: the custom ops are traced through their fake kernels and called from the graph.

    In a fresh compile cache: a cache shared with an older checkout once replayed a backward
    compiled against the old schema of ``lora_expand_backward`` (8 arguments, now 6)."""
    from torch._inductor.utils import fresh_cache

    from rapidfire_core.ops import triton_kernels

    torch._dynamo.reset()
    layer = _layer(dropout=0.0).to(kernel_device)
    batch = LoraBatch([("a", 5), (None, 3), ("b", 6)], kernel_device, adapter_sets=[layer.adapter_names])
    x = torch.randn(14, 32, device=kernel_device)
    with triton_kernels(), fresh_cache():
        eager_out, eager_grads = _step(layer, layer, x, batch)
        out, grads = _step(torch.compile(layer, fullgraph=True, backend=backend), layer, x, batch)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
