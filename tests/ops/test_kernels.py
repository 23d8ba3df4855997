"""Triton multi-LoRA kernels vs the pure-torch reference: forward, every gradient, determinism.

On a machine without a GPU the kernels run under the Triton interpreter on CPU tensors
(shapes are tiny: the interpreter executes every program in numpy). With a GPU the
same cases run compiled on CUDA, bf16 included (the interpreter's bf16 dot is broken).

Tolerance (flash-attention's rule): the kernel's error against an fp64 truth is at most
twice the error of the same computation done by torch in the same precision.
"""

from __future__ import annotations

import pytest
import torch

from rapidfire_core.ops import multi_lora_add, segment_tensors, triton_kernels
from tests.ops.helpers import Problem, assert_within_torch_error, make_problem

# name: (rows per segment, adapter slot per segment, rank per adapter)
CASES = {
    "n1-r1-with-unadapted": ([13, 4], [0, -1], [1]),
    "n1-r64": ([21], [0], [64]),
    "n2-r8-r16-interleaved-empty": ([5, 0, 11, 3, 6], [0, 1, 1, -1, 0], [8, 16]),
    "n2-r16": ([16, 17], [1, 0], [16, 16]),
    "n8-mixed-ranks": (
        [3, 5, 0, 7, 2, 9, 4, 1, 6],
        [0, 1, 2, 3, -1, 4, 5, 6, 7],
        [1, 8, 16, 64, 8, 16, 1, 64],
    ),
    "n8-one-absent": ([6, 6, 6, 6, 6, 6, 6], [0, 1, 2, 4, 5, 6, 7], [16] * 8),
}
SHAPES = {"K32-N48": (32, 48), "K37-N19-odd": (37, 19)}
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.gpu),
]
GRADS = ("out", "dx", "dy", "da", "db")


def forward_backward(p: Problem, backend: str, x_grad: bool = True) -> dict[str, torch.Tensor]:
    x = p.x.clone().requires_grad_(x_grad)
    y = p.y.clone().requires_grad_()
    a = p.lora_a.clone().requires_grad_()
    b = p.lora_b.clone().requires_grad_()
    with triton_kernels(backend == "triton"):
        out = multi_lora_add(y, x, a, b, p.scales, p.seg_starts, p.seg_slot, p.keep, p.drop_scale)
        inputs = [x, y, a, b] if x_grad else [y, a, b]
        grads = torch.autograd.grad(out, inputs, p.grad_out)
    if not x_grad:
        grads = (None, *grads)
    return dict(zip(GRADS, (out.detach(), *grads), strict=True))


@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["nodrop", "drop"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_kernels_match_reference(kernel_device, case, shape, dtype, dropout):
    lengths, slots, ranks = case
    k, n = shape
    base = make_problem(lengths, slots, ranks, k, n, dropout=dropout, seed=len(lengths) * 100 + k)
    truth = forward_backward(base.to(dtype).to(torch.float64), "torch")  # same rounded inputs
    same_precision = forward_backward(base.to(dtype), "torch")
    got = forward_backward(base.to(dtype, kernel_device), "triton")
    for name in GRADS:
        assert got[name].dtype == dtype and got[name].shape == truth[name].shape, name
        assert_within_torch_error(name, got[name], same_precision[name], truth[name])
    # Zero padding to the largest rank must leave the padded gradient slices exactly zero.
    for i, r in enumerate(ranks):
        assert torch.count_nonzero(got["da"][i, r:]) == 0
        assert torch.count_nonzero(got["db"][i, :, r:]) == 0
    # Adapters without rows get exact zeros; rows without an adapter pass y through untouched.
    present = {s for s, length in zip(slots, lengths, strict=True) if s >= 0 and length > 0}
    for i in set(range(len(ranks))) - present:
        assert torch.count_nonzero(got["da"][i]) == 0 and torch.count_nonzero(got["db"][i]) == 0
    starts = base.seg_starts.tolist()
    for j, slot in enumerate(slots):
        if slot < 0:
            rows = slice(starts[j], starts[j + 1])
            assert torch.equal(got["out"][rows].cpu(), base.to(dtype).y[rows])
            assert torch.count_nonzero(got["dx"][rows]) == 0


def test_backward_is_bit_identical(kernel_device):
    """No atomics: two backward passes over the same inputs give the same bits."""
    case = CASES["n2-r8-r16-interleaved-empty"]
    p = make_problem(*case, 40, 24, dropout=0.3, seed=7).to(torch.float16, kernel_device)
    first = forward_backward(p, "triton")
    second = forward_backward(p, "triton")
    for name in GRADS:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("split", [1, 2, 3])
def test_wgrad_row_splits_are_exact_and_deterministic(kernel_device, split):
    """The split-over-rows reduction (fp32 partials summed in a fixed order) matches the reference."""
    from rapidfire_core.ops import _backend

    lengths, slots, ranks = [40, 3, 0, 25], [1, -1, 0, 0], [8, 16]
    p = make_problem(lengths, slots, ranks, 24, 20, dropout=0.3, seed=3).to(torch.float32, kernel_device)
    dy = p.grad_out
    s = torch.randn(p.x.shape[0], max(ranks), device=kernel_device)
    kern = _backend.kernels
    db = kern.segmented_wgrad(dy, s, p.seg_starts, p.seg_slot, 2, out_scale=p.scales, split=split)
    da = kern.segmented_wgrad(
        s, p.x, p.seg_starts, p.seg_slot, 2, keep=p.keep, drop_scale=p.drop_scale, split=split
    )
    for i in range(2):
        rows = torch.cat(
            [
                torch.arange(s0, s0 + n)
                for s0, n, a in zip([0, 40, 43, 43], lengths, slots, strict=True)
                if a == i
            ]
        )
        drop = p.x[rows] * p.keep[rows] * p.drop_scale[i]
        torch.testing.assert_close(db[i], p.scales[i] * dy[rows].T @ s[rows], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(da[i], s[rows].T @ drop, rtol=1e-5, atol=1e-5)
    again = kern.segmented_wgrad(dy, s, p.seg_starts, p.seg_slot, 2, out_scale=p.scales, split=split)
    assert torch.equal(db, again)


def test_input_without_grad_skips_dx(kernel_device):
    p = make_problem(*CASES["n2-r16"], 32, 16, seed=1).to(torch.float32, kernel_device)
    got = forward_backward(p, "triton", x_grad=False)
    ref = forward_backward(p, "torch", x_grad=False)
    assert got["dx"] is None
    for name in ("out", "dy", "da", "db"):
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "lengths,slots",
    [([0], [0]), ([5, 0], [-1, 0]), ([0, 0, 0], [1, -1, 0])],
    ids=["no-rows", "only-unadapted", "all-empty"],
)
def test_degenerate_layouts(kernel_device, lengths, slots):
    """Zero rows, or rows no adapter touches: outputs equal y, adapter gradients are exact zeros."""
    p = make_problem(lengths, slots, [4, 8], 16, 16, seed=2).to(torch.float32, kernel_device)
    got = forward_backward(p, "triton")
    assert torch.equal(got["out"], p.y)
    assert torch.count_nonzero(got["da"]) == 0 and torch.count_nonzero(got["db"]) == 0
    assert got["dx"].shape == p.x.shape and torch.count_nonzero(got["dx"]) == 0


def test_segment_tensors_validate_on_host():
    starts, adapters = segment_tensors([3, 0, 2], [0, -1, 1])
    assert starts.tolist() == [0, 3, 3, 5] and adapters.tolist() == [0, -1, 1]
    assert starts.dtype == adapters.dtype == torch.int32
    with pytest.raises(ValueError, match="lengths"):
        segment_tensors([3], [0, 1])
    with pytest.raises(ValueError, match=">= 0"):
        segment_tensors([-1], [0])
    with pytest.raises(ValueError, match="-1"):
        segment_tensors([1], [-2])


@pytest.mark.parametrize("path", ["reference", "triton", "fake"])
def test_bad_operands_are_rejected_before_any_launch(kernel_device, path):
    """The kernels index by the operands' shapes: a mismatch would read or write out of bounds on
    a GPU. So every implementation (the reference, the kernels, and the fake kernel torch.compile
    traces) checks shapes, dtypes, devices and the dropout pair first, with the same errors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    p = make_problem(*CASES["n2-r16"], 32, 16, dropout=0.3, seed=3).to(torch.float32, kernel_device)

    def run(**changes):
        args = dict(
            y=p.y, x=p.x, lora_a=p.lora_a, lora_b=p.lora_b, scales=p.scales, seg_starts=p.seg_starts,
            seg_slot=p.seg_slot, keep=p.keep, drop_scale=p.drop_scale,
        )  # fmt: skip
        args.update(changes)
        if path == "fake":
            with FakeTensorMode() as mode:
                return multi_lora_add(**{k: v if v is None else mode.from_tensor(v) for k, v in args.items()})
        with triton_kernels(path == "triton"):
            return multi_lora_add(**args)

    with pytest.raises(ValueError, match="keep and drop_scale"):
        run(drop_scale=None)
    with pytest.raises(ValueError, match="lora_a has shape"):
        run(lora_a=p.lora_a[:, :, :-1])  # K of A differs from K of x
    with pytest.raises(ValueError, match="lora_a has shape"):
        run(lora_a=p.lora_a[0])  # not a stack
    with pytest.raises(TypeError, match="lora_a is torch.float16, expected torch.float32"):
        run(lora_a=p.lora_a.half())
    with pytest.raises(ValueError, match="y has shape"):
        run(y=p.y[:-1])
    with pytest.raises(ValueError, match="lora_b has shape"):
        run(lora_b=p.lora_b[:, :-1])  # N of B differs from N of y
    with pytest.raises(ValueError, match="keep has shape"):
        run(keep=p.keep[:, :-1])
    with pytest.raises(ValueError, match="keep is on meta"):
        run(keep=p.keep.to("meta"))
    with pytest.raises(TypeError, match="seg_starts is torch.int64"):
        run(seg_starts=p.seg_starts.long())
    with pytest.raises(ValueError, match="seg_starts has shape"):
        run(seg_starts=p.seg_starts[:-1])
    with pytest.raises(ValueError, match="scales has shape"):
        run(scales=p.scales[:1])
    if path == "triton":  # the kernels load per-adapter scalars as fp32; the reference takes any float
        with pytest.raises(TypeError, match="scales is torch.float64"):
            run(scales=p.scales.double())


def test_a_non_contiguous_keep_mask_is_honoured(kernel_device):
    """A keep mask with another memory layout (e.g. a transposed buffer) gives the same result
    as its contiguous copy: the kernels read the mask row by row."""
    p = make_problem(*CASES["n2-r16"], 32, 16, dropout=0.3, seed=4).to(torch.float32, kernel_device)
    transposed_layout = p.keep.t().contiguous().t()  # same values, column-major
    with triton_kernels():
        want = multi_lora_add(
            p.y, p.x, p.lora_a, p.lora_b, p.scales, p.seg_starts, p.seg_slot, p.keep, p.drop_scale
        )
        got = multi_lora_add(
            p.y,
            p.x,
            p.lora_a,
            p.lora_b,
            p.scales,
            p.seg_starts,
            p.seg_slot,
            transposed_layout,
            p.drop_scale,
        )
    assert torch.equal(got, want)
