"""torch.library.opcheck on every registered op: schema, fake kernel, autograd registration, AOT dispatch.

Run on the reference (the default implementation) and, with the Triton kernels enabled, on
the kernels (interpreter on CPU, compiled on a GPU). The backward ops are checked with every
subset of the gradients they compute (dX needs A, dA needs X; dS needs B, dB needs S).
"""

from __future__ import annotations

import pytest
import torch

from rapidfire_core.ops import (
    lora_expand,
    lora_expand_backward,
    lora_shrink,
    lora_shrink_backward,
    triton_kernels,
)
from tests.ops.helpers import make_problem

LAYOUT = ([5, 0, 9, 3, 4], [1, 0, -1, 0, 1], [4, 8])


def _cases(p, dropout: bool):
    m, n, r = p.x.shape[0], p.lora_a.shape[0], p.lora_a.shape[1]
    keep, ds = (p.keep, p.drop_scale) if dropout else (None, None)
    x = p.x.clone().requires_grad_()
    a = p.lora_a.clone().requires_grad_()
    b = p.lora_b.clone().requires_grad_()
    y = p.y.clone().requires_grad_()
    s = torch.randn(m, r, device=p.x.device, dtype=p.x.dtype, requires_grad=True)
    grad_s = torch.randn(m, r, device=p.x.device, dtype=p.x.dtype)
    return [
        (lora_shrink, (x, a, p.seg_starts, p.seg_slot, keep, ds)),
        (lora_shrink_backward, (grad_s, p.x, p.lora_a, p.seg_starts, p.seg_slot, keep, ds, n)),
        (lora_shrink_backward, (grad_s, p.x, None, p.seg_starts, p.seg_slot, keep, ds, n)),
        (lora_shrink_backward, (grad_s, None, p.lora_a, p.seg_starts, p.seg_slot, keep, ds, n)),
        (lora_expand, (y, s, b, p.scales, p.seg_starts, p.seg_slot)),
        (lora_expand_backward, (p.grad_out, s.detach(), p.lora_b, p.scales, p.seg_starts, p.seg_slot)),
        (lora_expand_backward, (p.grad_out, None, p.lora_b, p.scales, p.seg_starts, p.seg_slot)),
        (lora_expand_backward, (p.grad_out, s.detach(), None, p.scales, p.seg_starts, p.seg_slot)),
    ]


@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "drop"])
def test_opcheck_reference(dropout):
    p = make_problem(*LAYOUT, 12, 10, dropout=0.3, seed=0)
    for op, args in _cases(p, dropout):
        with triton_kernels(False):
            torch.library.opcheck(op, args)


@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "drop"])
def test_opcheck_triton(kernel_device, dropout):
    p = make_problem(*LAYOUT, 12, 10, dropout=0.3, seed=0).to(device=kernel_device)
    for op, args in _cases(p, dropout):
        with triton_kernels():
            torch.library.opcheck(op, args)


def test_ops_are_registered_in_torch_library():
    for name in ("lora_shrink", "lora_shrink_backward", "lora_expand", "lora_expand_backward"):
        assert hasattr(torch.ops.rapidfire, name)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_outputs_are_contiguous_and_match_the_fake_kernels(kernel_device, backend):
    """Column-major activations (a transposed buffer): every op returns contiguous outputs on
    both paths, and the fake kernels say so, so torch.compile plans the right strides."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    p = make_problem(*LAYOUT, 12, 10, dropout=0.3, seed=0).to(device=kernel_device)
    column_major = lambda t: t.t().contiguous().t()  # noqa: E731
    p.x, p.y, p.grad_out = column_major(p.x), column_major(p.y), column_major(p.grad_out)
    for op, args in _cases(p, dropout=True):
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        with triton_kernels(backend == "triton"):
            real = op(*args)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        real = real if isinstance(real, tuple) else (real,)
        fake = fake if isinstance(fake, tuple) else (fake,)
        for r, f in zip(real, fake, strict=True):
            assert r.is_contiguous(), op
            assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype), op
