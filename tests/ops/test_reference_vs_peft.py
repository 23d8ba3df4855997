"""The pure-torch paths (the ops on CPU, and the per-adapter loop) equal PEFT's LoRA layer.

For each adapter alone and for mixed batches (several adapters with different ranks,
scales, rsLoRA, dropout, a no-adapter segment, an adapter owning two segments): the
output and every gradient (dX, dA_i, dB_i) of ``sum(out * G)``. In fp64 the agreement is
to rounding (1e-10); with dropout, PEFT is given the same keep mask.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rapidfire_core.ops import AdapterWeights, multi_lora_add, multi_lora_linear_reference, segment_tensors
from tests.ops.peft_oracle import Spec, peft_multi_lora

SPECS = [Spec(4, 8), Spec(16, 16, dropout=0.1, rslora=True), Spec(1, 2, dropout=0.3)]
MIXED = [(0, 5, 0), (5, 8, -1), (8, 14, 2), (14, 18, 1), (18, 18, 1), (18, 20, 0)]  # (start, end, adapter)


def _setup(specs, segments, dtype, dropout_on, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k, n = 24, 20
    m = segments[-1][1]
    base = nn.Linear(k, n).to(dtype)
    with torch.no_grad():
        base.weight.copy_(torch.randn(n, k, generator=gen))
        base.bias.copy_(torch.randn(n, generator=gen))
    weights = [
        (torch.randn(s.r, k, generator=gen).to(dtype), torch.randn(n, s.r, generator=gen).to(dtype))
        for s in specs
    ]
    x = torch.randn(m, k, generator=gen).to(dtype)
    grad_out = torch.randn(m, n, generator=gen).to(dtype)
    keep = None
    if dropout_on:
        p_of = {i: s.dropout for i, s in enumerate(specs)}
        row_p = torch.zeros(m)
        for s, e, slot in segments:
            row_p[s:e] = p_of.get(slot, 0.0)
        keep = torch.rand(m, k, generator=gen) >= row_p[:, None]
    return base, weights, x, grad_out, keep


def _ops_path(base, specs, weights, x, segments, grad_out, keep):
    """The registered ops (CPU -> reference via the dispatcher) on zero-padded stacks."""
    x = x.clone().requires_grad_()
    params = [(a.clone().requires_grad_(), b.clone().requires_grad_()) for a, b in weights]
    r_max = max(s.r for s in specs)
    a_stack = torch.stack([F.pad(a, (0, 0, 0, r_max - a.shape[0])) for a, _ in params])
    b_stack = torch.stack([F.pad(b, (0, r_max - b.shape[1])) for _, b in params])
    seg_starts, seg_slot = segment_tensors([e - s for s, e, _ in segments], [slot for *_, slot in segments])
    scales = torch.tensor([s.scale for s in specs])
    # fp32 is the ops contract; fp64 runs keep 1/(1-p) in fp64 so the comparison stays at rounding level.
    scale_dtype = torch.promote_types(x.dtype, torch.float32)
    drop_scale = (
        torch.tensor([1 / (1 - s.dropout) for s in specs], dtype=scale_dtype) if keep is not None else None
    )
    y = F.linear(x, base.weight, base.bias)
    out = multi_lora_add(y, x, a_stack, b_stack, scales, seg_starts, seg_slot, keep, drop_scale)
    (out * grad_out).sum().backward()
    return {
        "out": out.detach(),
        "dx": x.grad,
        "da": [a.grad for a, _ in params],
        "db": [b.grad for _, b in params],
    }


def _loop_path(base, specs, weights, x, segments, grad_out, keep):
    """multi_lora_linear_reference: the semantics loop in plain autograd."""
    x = x.clone().requires_grad_()
    params = [(a.clone().requires_grad_(), b.clone().requires_grad_()) for a, b in weights]
    adapters = [AdapterWeights(a, b, s.scale, s.dropout) for s, (a, b) in zip(specs, params, strict=True)]
    out = multi_lora_linear_reference(x, base.weight, base.bias, adapters, segments, keep)
    (out * grad_out).sum().backward()
    grads = [
        (
            a.grad if a.grad is not None else torch.zeros_like(a),
            b.grad if b.grad is not None else torch.zeros_like(b),
        )
        for a, b in params
    ]
    return {"out": out.detach(), "dx": x.grad, "da": [g[0] for g in grads], "db": [g[1] for g in grads]}


def _assert_same(got, want, tol):
    torch.testing.assert_close(got["out"], want["out"], rtol=tol, atol=tol)
    torch.testing.assert_close(got["dx"], want["dx"], rtol=tol, atol=tol)
    for i in range(len(want["da"])):
        torch.testing.assert_close(got["da"][i], want["da"][i], rtol=tol, atol=tol, msg=f"dA[{i}]")
        torch.testing.assert_close(got["db"][i], want["db"][i], rtol=tol, atol=tol, msg=f"dB[{i}]")


PATHS = {"ops": _ops_path, "loop": _loop_path}
DTYPE_TOL = [pytest.param(torch.float64, 1e-10, id="fp64"), pytest.param(torch.float32, 2e-4, id="fp32")]


@pytest.mark.parametrize("dropout_on", [False, True], ids=["nodrop", "samemask"])
@pytest.mark.parametrize("dtype,tol", DTYPE_TOL)
@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
@pytest.mark.parametrize("alone", range(len(SPECS)), ids=[f"alone{i}" for i in range(len(SPECS))])
def test_each_adapter_alone_equals_peft(alone, path, dtype, tol, dropout_on):
    segments = [(0, 11, alone)]
    base, weights, x, grad_out, keep = _setup(SPECS, segments, dtype, dropout_on, seed=alone)
    want = peft_multi_lora(base, SPECS, weights, x, segments, grad_out, keep)
    _assert_same(path(base, SPECS, weights, x, segments, grad_out, keep), want, tol)


@pytest.mark.parametrize("dropout_on", [False, True], ids=["nodrop", "samemask"])
@pytest.mark.parametrize("dtype,tol", DTYPE_TOL)
@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
def test_mixed_adapters_equal_peft(path, dtype, tol, dropout_on):
    base, weights, x, grad_out, keep = _setup(SPECS, MIXED, dtype, dropout_on, seed=5)
    want = peft_multi_lora(base, SPECS, weights, x, MIXED, grad_out, keep)
    _assert_same(path(base, SPECS, weights, x, MIXED, grad_out, keep), want, tol)


def test_padding_to_max_rank_changes_nothing():
    """An r=1 adapter stacked with an r=16 one gives the same result and grads as stacked alone."""
    specs = [SPECS[2]]
    segments = [(0, 9, 0)]
    base, weights, x, grad_out, _ = _setup(specs, segments, torch.float64, False, seed=9)
    alone = _ops_path(base, specs, weights, x, segments, grad_out, None)
    wide_specs = [SPECS[2], SPECS[1]]
    wide_weights = [
        weights[0],
        (torch.randn(16, 24, dtype=torch.float64), torch.randn(20, 16, dtype=torch.float64)),
    ]
    padded = _ops_path(base, wide_specs, wide_weights, x, segments, grad_out, None)
    torch.testing.assert_close(padded["out"], alone["out"], rtol=0, atol=1e-12)
    torch.testing.assert_close(padded["da"][0], alone["da"][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(padded["db"][0], alone["db"][0], rtol=0, atol=1e-12)
    assert torch.count_nonzero(padded["da"][1]) == 0 and torch.count_nonzero(padded["db"][1]) == 0
