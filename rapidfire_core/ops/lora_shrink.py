"""``rapidfire::lora_shrink``: per-segment ``S = drop(X) A_i^T``, with its backward.

Semantics (rows of a segment with adapter ``a``; ``-1`` segments give zero rows)::

    for (start, end, a) in segments:
        S[start:end] = 0                                              if a == -1
        S[start:end] = (X[start:end] * keep[start:end] / (1 - p_a)) @ A[a].T   # (len, R)

Backward, with dS = dL/dS::

    dX[start:end] = (dS[start:end] @ A[a]) * keep[start:end] / (1 - p_a)    # (len, K)
    dA[a]         = sum over a's segments of dS[start:end].T @ drop(X[start:end])  # (R, K)

Shapes: X (M, K); A (n, R, K) stacked, zero-padded to the largest rank R; keep (M, K)
bool or None (no dropout); drop_scale (n,) fp32 ``1 / (1 - p_a)`` or None.

The backward uses the forward's ``keep`` mask exactly (it is saved, not redrawn). dA
is reduced per adapter in a fixed order by one program group: deterministic. CUDA runs
the Triton kernels (``_kernels``); every other device runs the reference below.
"""

from __future__ import annotations

import torch

from . import _backend
from .segments import adapter_row_ranges, check_layout, check_operands, check_shapes, host_segments

# --------------------------------------------------------------------------- reference


def dropped_rows(
    x: torch.Tensor,
    keep: torch.Tensor | None,
    drop_scale: torch.Tensor | None,
    start: int,
    end: int,
    slot: int,
) -> torch.Tensor:
    """drop(X[start:end]) for adapter ``slot`` in x.dtype; masked and scaled in >= fp32, like the kernel."""
    rows = x[start:end]
    if keep is None:
        return rows
    wide = torch.promote_types(x.dtype, torch.float32)
    return (rows.to(wide) * keep[start:end] * drop_scale[slot].to(wide)).to(x.dtype)


def lora_shrink_reference(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_adapter: torch.Tensor,
    keep: torch.Tensor | None = None,
    drop_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-segment loop above, in plain torch (the CPU path and the test oracle)."""
    out = x.new_zeros((x.shape[0], lora_a.shape[1]))  # (M, R)
    for start, end, slot in host_segments(seg_starts, seg_adapter):
        if slot >= 0 and end > start:
            out[start:end] = dropped_rows(x, keep, drop_scale, start, end, slot) @ lora_a[slot].T
    return out


def lora_shrink_backward_reference(
    grad_s: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_adapter: torch.Tensor,
    keep: torch.Tensor | None,
    drop_scale: torch.Tensor | None,
    need_dx: bool = True,
    need_da: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dX (M, K), dA (n, R, K)); an unneeded one is an empty tensor."""
    segments = host_segments(seg_starts, seg_adapter)
    dx = x.new_zeros(x.shape) if need_dx else x.new_empty(0)
    da = lora_a.new_zeros(lora_a.shape) if need_da else lora_a.new_empty(0)
    for slot in range(lora_a.shape[0]):
        ranges = adapter_row_ranges(segments, slot)
        if not ranges:
            continue
        if need_da:
            # One GEMM over all of the adapter's rows, as PEFT's autograd would do for its batch.
            g = torch.cat([grad_s[s:e] for s, e in ranges])  # (M_a, R)
            xd = torch.cat([dropped_rows(x, keep, drop_scale, s, e, slot) for s, e in ranges])  # (M_a, K)
            da[slot] = g.T @ xd
        if need_dx:
            for s, e in ranges:
                dxs = grad_s[s:e] @ lora_a[slot]  # (len, K)
                if keep is not None:
                    wide = torch.promote_types(x.dtype, torch.float32)
                    dxs = (dxs.to(wide) * keep[s:e] * drop_scale[slot].to(wide)).to(x.dtype)
                dx[s:e] = dxs
    return dx, da


# --------------------------------------------------------------------------- triton


def _check_triton_operands(op, x, lora_a, seg_starts, seg_adapter, keep, drop_scale, **more):
    check_operands(op, x.dtype, x=x, lora_a=lora_a, **more)
    (m, k), (n, r) = x.shape, lora_a.shape[:2]
    shapes = {"x": (x, (m, k)), "lora_a": (lora_a, (n, r, k))}
    if "grad_s" in more:
        shapes["grad_s"] = (more["grad_s"], (m, r))
    check_shapes(op, **shapes)
    check_layout(op, x.device, m, n, seg_starts, seg_adapter, keep=keep, keep_cols=k, drop_scale=drop_scale)


def _shrink_triton(x, lora_a, seg_starts, seg_adapter, keep, drop_scale):
    _check_triton_operands("lora_shrink", x, lora_a, seg_starts, seg_adapter, keep, drop_scale)
    return _backend.kernels.segmented_narrow(
        x, lora_a, seg_starts, seg_adapter, keep=keep, drop_scale=drop_scale
    )


def _shrink_backward_triton(grad_s, x, lora_a, seg_starts, seg_adapter, keep, drop_scale, need_dx, need_da):
    _check_triton_operands(
        "lora_shrink_backward", x, lora_a, seg_starts, seg_adapter, keep, drop_scale, grad_s=grad_s
    )
    k = _backend.kernels
    dx = x.new_empty(0)
    da = lora_a.new_empty(0)
    if need_dx:
        # w[a, k, r] = A[a, r, k]: the transposed view, no copy.
        dx = k.segmented_wide(
            grad_s, lora_a.transpose(1, 2), seg_starts, seg_adapter, keep=keep, drop_scale=drop_scale
        )
    if need_da:
        da = k.segmented_wgrad(
            grad_s, x, seg_starts, seg_adapter, lora_a.shape[0], keep=keep, drop_scale=drop_scale,
            out_dtype=lora_a.dtype,
        )  # fmt: skip
    return dx, da


# --------------------------------------------------------------------------- registration


@torch.library.custom_op("rapidfire::lora_shrink", mutates_args=())
def lora_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_adapter: torch.Tensor,
    keep: torch.Tensor | None = None,
    drop_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """S (M, R) = per-segment drop(X) A_a^T; see the module docstring."""
    if _backend.use_triton(x):  # CUDA, or forced ("triton" under the interpreter)
        return _shrink_triton(x, lora_a, seg_starts, seg_adapter, keep, drop_scale)
    return lora_shrink_reference(x, lora_a, seg_starts, seg_adapter, keep, drop_scale)


@torch.library.custom_op("rapidfire::lora_shrink_backward", mutates_args=())
def lora_shrink_backward(
    grad_s: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_adapter: torch.Tensor,
    keep: torch.Tensor | None,
    drop_scale: torch.Tensor | None,
    need_dx: bool,
    need_da: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dX (M, K), dA (n, R, K)) of lora_shrink; unneeded outputs are empty."""
    if _backend.use_triton(x):
        return _shrink_backward_triton(
            grad_s, x, lora_a, seg_starts, seg_adapter, keep, drop_scale, need_dx, need_da
        )
    return lora_shrink_backward_reference(
        grad_s, x, lora_a, seg_starts, seg_adapter, keep, drop_scale, need_dx, need_da
    )


@lora_shrink.register_fake
def _(x, lora_a, seg_starts, seg_adapter, keep=None, drop_scale=None):
    return x.new_empty((x.shape[0], lora_a.shape[1]))


@lora_shrink_backward.register_fake
def _(grad_s, x, lora_a, seg_starts, seg_adapter, keep, drop_scale, need_dx, need_da):
    dx = x.new_empty(x.shape) if need_dx else x.new_empty(0)
    da = lora_a.new_empty(lora_a.shape) if need_da else lora_a.new_empty(0)
    return dx, da


def _setup_context(ctx, inputs, output):
    x, lora_a, seg_starts, seg_adapter, keep, drop_scale = inputs
    # X is saved, not drop(X): the kernel re-applies the saved mask (1 byte/elem instead of 2-4).
    ctx.save_for_backward(x, lora_a, seg_starts, seg_adapter, keep, drop_scale)


def _backward(ctx, grad_s):
    x, lora_a, seg_starts, seg_adapter, keep, drop_scale = ctx.saved_tensors
    need_dx, need_da = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_dx or need_da):
        return None, None, None, None, None, None
    dx, da = lora_shrink_backward(
        grad_s, x, lora_a, seg_starts, seg_adapter, keep, drop_scale, need_dx, need_da
    )
    return (dx if need_dx else None), (da if need_da else None), None, None, None, None


lora_shrink.register_autograd(_backward, setup_context=_setup_context)
