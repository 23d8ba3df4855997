"""torch.library.opcheck on every registered op: schema, fake kernel, autograd registration, AOT dispatch.

Run on the CPU reference and, with the "triton" backend, on the kernels (interpreter on
CPU, compiled on a GPU).
"""

from __future__ import annotations

import pytest
import torch

from rapidfire_core.ops import (
    lora_backend,
    lora_expand,
    lora_expand_backward,
    lora_shrink,
    lora_shrink_backward,
)
from tests.ops.helpers import make_problem

LAYOUT = ([5, 0, 9, 3, 4], [1, 0, -1, 0, 1], [4, 8])


def _cases(p, dropout: bool):
    m, r = p.x.shape[0], p.lora_a.shape[1]
    keep, ds = (p.keep, p.drop_scale) if dropout else (None, None)
    x = p.x.clone().requires_grad_()
    a = p.lora_a.clone().requires_grad_()
    b = p.lora_b.clone().requires_grad_()
    y = p.y.clone().requires_grad_()
    s = torch.randn(m, r, device=p.x.device, dtype=p.x.dtype, requires_grad=True)
    grad_s = torch.randn(m, r, device=p.x.device, dtype=p.x.dtype)
    return [
        (lora_shrink, (x, a, p.seg_starts, p.seg_adapter, keep, ds)),
        (lora_shrink_backward, (grad_s, p.x, p.lora_a, p.seg_starts, p.seg_adapter, keep, ds, True, True)),
        (lora_shrink_backward, (grad_s, p.x, p.lora_a, p.seg_starts, p.seg_adapter, keep, ds, False, True)),
        (lora_expand, (y, s, b, p.scales, p.seg_starts, p.seg_adapter)),
        (
            lora_expand_backward,
            (p.grad_out, s.detach(), p.lora_b, p.scales, p.seg_starts, p.seg_adapter, True, True),
        ),
        (
            lora_expand_backward,
            (p.grad_out, s.detach(), p.lora_b, p.scales, p.seg_starts, p.seg_adapter, True, False),
        ),
    ]


@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "drop"])
def test_opcheck_reference(dropout):
    p = make_problem(*LAYOUT, 12, 10, dropout=0.3, seed=0)
    for op, args in _cases(p, dropout):
        with lora_backend("torch"):
            torch.library.opcheck(op, args)


@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "drop"])
def test_opcheck_triton(kernel_device, dropout):
    p = make_problem(*LAYOUT, 12, 10, dropout=0.3, seed=0).to(device=kernel_device)
    for op, args in _cases(p, dropout):
        with lora_backend("triton"):
            torch.library.opcheck(op, args)


def test_ops_are_registered_in_torch_library():
    for name in ("lora_shrink", "lora_shrink_backward", "lora_expand", "lora_expand_backward"):
        assert hasattr(torch.ops.rapidfire, name)
