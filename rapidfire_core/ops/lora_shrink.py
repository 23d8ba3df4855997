"""``rapidfire::lora_shrink``: per-segment ``S = drop(X) A_i^T``, with its backward.

Semantics (rows of a segment with adapter slot ``a``; ``-1`` segments give zero rows)::

    for (start, end, a) in segments:
        S[start:end] = 0                                              if a == -1
        S[start:end] = (X[start:end] * keep[start:end] / (1 - p_a)) @ A[a].T   # (len, R)

Backward, with dS = dL/dS::

    dX[start:end] = (dS[start:end] @ A[a]) * keep[start:end] / (1 - p_a)    # (len, K), needs A
    dA[a]         = sum over a's segments of dS[start:end].T @ drop(X[start:end])  # (R, K), needs X

Shapes: X (M, K); A (n, R, K) stacked, zero-padded to the largest rank R; keep (M, K)
bool or None (no dropout); drop_scale (n,) ``1 / (1 - p_a)`` (fp32 for the kernels) or None.

The backward uses the forward's ``keep`` mask exactly (it is saved, not redrawn), and autograd
saves X only when A needs a gradient and A only when X does. dA is reduced per adapter in a
fixed order by one program group: deterministic. The op's default implementation is the
reference below, on every device; the Triton kernels (``_kernels``) are registered for a device
only when enabled (``_backend``).
"""

from __future__ import annotations

import torch

from . import _backend
from .segments import adapter_row_ranges, check_kernel_scalars, check_layout, check_tensor, host_segments

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
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    return (rows.to(acc_dtype) * keep[start:end] * drop_scale[slot].to(acc_dtype)).to(x.dtype)


def lora_shrink_reference(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
    keep: torch.Tensor | None = None,
    drop_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-segment loop above, in plain torch (the default implementation and the test oracle)."""
    out = x.new_zeros((x.shape[0], lora_a.shape[1]))  # (M, R)
    for start, end, slot in host_segments(seg_starts, seg_slot):
        if slot >= 0 and end > start:
            out[start:end] = dropped_rows(x, keep, drop_scale, start, end, slot) @ lora_a[slot].T
    return out


def lora_shrink_backward_reference(
    grad_s: torch.Tensor,
    x: torch.Tensor | None,
    lora_a: torch.Tensor | None,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
    keep: torch.Tensor | None,
    drop_scale: torch.Tensor | None,
    num_adapters: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dX (M, K) if lora_a is given, dA (n, R, K) if x is given); one not computed is empty."""
    segments = host_segments(seg_starts, seg_slot)
    m, r = grad_s.shape
    dx = lora_a.new_zeros((m, lora_a.shape[2])) if lora_a is not None else grad_s.new_empty(0)
    da = x.new_zeros((num_adapters, r, x.shape[1])) if x is not None else grad_s.new_empty(0)
    for slot in range(num_adapters):
        ranges = adapter_row_ranges(segments, slot)
        if not ranges:
            continue
        if x is not None:
            # One GEMM over all of the adapter's rows, as PEFT's autograd would do for its batch.
            g = torch.cat([grad_s[s:e] for s, e in ranges])  # (M_a, R)
            xd = torch.cat([dropped_rows(x, keep, drop_scale, s, e, slot) for s, e in ranges])  # (M_a, K)
            da[slot] = g.T @ xd
        if lora_a is not None:
            for s, e in ranges:
                dxs = grad_s[s:e] @ lora_a[slot]  # (len, K)
                if keep is not None:
                    acc_dtype = torch.promote_types(dxs.dtype, torch.float32)
                    dxs = (dxs.to(acc_dtype) * keep[s:e] * drop_scale[slot].to(acc_dtype)).to(dx.dtype)
                dx[s:e] = dxs
    return dx, da


# --------------------------------------------------------------------------- contract


def _check_forward(x, lora_a, seg_starts, seg_slot, keep, drop_scale) -> None:
    """Shapes, dtypes and devices (metadata only): by the fake kernel and every real one."""
    op, device = "lora_shrink", x.device
    check_tensor(op, "x", x, (None, None), "float", device)
    m, k = x.shape
    check_tensor(op, "lora_a", lora_a, (None, None, k), x.dtype, device)
    check_layout(
        op, device, seg_starts, seg_slot, lora_a.shape[0], keep=keep, keep_shape=(m, k), drop_scale=drop_scale
    )


def _check_backward(grad_s, x, lora_a, seg_starts, seg_slot, keep, drop_scale, num_adapters) -> None:
    op, device = "lora_shrink_backward", grad_s.device
    check_tensor(op, "grad_s", grad_s, (None, None), "float", device)
    m, r = grad_s.shape
    k = None
    if x is not None:
        check_tensor(op, "x", x, (m, None), grad_s.dtype, device)
        k = x.shape[1]
    if lora_a is not None:
        check_tensor(op, "lora_a", lora_a, (num_adapters, r, k), grad_s.dtype, device)
        k = lora_a.shape[2]
    check_layout(
        op, device, seg_starts, seg_slot, num_adapters, keep=keep, keep_shape=(m, k), drop_scale=drop_scale
    )


# --------------------------------------------------------------------------- triton


def _shrink_triton(x, lora_a, seg_starts, seg_slot, keep=None, drop_scale=None):
    """lora_shrink's Triton kernel (registered per device by ``_backend.enable_triton_kernels``)."""
    _check_forward(x, lora_a, seg_starts, seg_slot, keep, drop_scale)
    if x.dtype not in _backend.KERNEL_DTYPES:
        return lora_shrink_reference(x, lora_a, seg_starts, seg_slot, keep, drop_scale)
    check_kernel_scalars("lora_shrink", drop_scale=drop_scale)
    return _backend.kernels.segmented_shrink(
        x, lora_a, seg_starts, seg_slot, keep=keep, drop_scale=drop_scale
    )


def _shrink_backward_triton(grad_s, x, lora_a, seg_starts, seg_slot, keep, drop_scale, num_adapters):
    _check_backward(grad_s, x, lora_a, seg_starts, seg_slot, keep, drop_scale, num_adapters)
    if grad_s.dtype not in _backend.KERNEL_DTYPES:
        return lora_shrink_backward_reference(
            grad_s, x, lora_a, seg_starts, seg_slot, keep, drop_scale, num_adapters
        )
    check_kernel_scalars("lora_shrink_backward", drop_scale=drop_scale)
    kernels = _backend.kernels
    dx = da = grad_s.new_empty(0)
    if lora_a is not None:
        # w[a, k, r] = A[a, r, k]: the transposed view, no copy.
        dx = kernels.segmented_expand(
            grad_s, lora_a.transpose(1, 2), seg_starts, seg_slot, keep=keep, drop_scale=drop_scale
        )
    if x is not None:
        da = kernels.segmented_wgrad(
            grad_s, x, seg_starts, seg_slot, num_adapters, keep=keep, drop_scale=drop_scale, out_dtype=x.dtype
        )
    return dx, da


# --------------------------------------------------------------------------- registration


@torch.library.custom_op("rapidfire::lora_shrink", mutates_args=())
def lora_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
    keep: torch.Tensor | None = None,
    drop_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """S (M, R) = per-segment drop(X) A_a^T; see the module docstring. Default: the reference."""
    _check_forward(x, lora_a, seg_starts, seg_slot, keep, drop_scale)
    return lora_shrink_reference(x, lora_a, seg_starts, seg_slot, keep, drop_scale)


@torch.library.custom_op("rapidfire::lora_shrink_backward", mutates_args=())
def lora_shrink_backward(
    grad_s: torch.Tensor,
    x: torch.Tensor | None,
    lora_a: torch.Tensor | None,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
    keep: torch.Tensor | None,
    drop_scale: torch.Tensor | None,
    num_adapters: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dX (M, K), dA (n, R, K)) of lora_shrink: dX when ``lora_a`` is given (it needs A), dA when
    ``x`` is (it needs X); one not computed is an empty tensor. Default: the reference."""
    _check_backward(grad_s, x, lora_a, seg_starts, seg_slot, keep, drop_scale, num_adapters)
    return lora_shrink_backward_reference(
        grad_s, x, lora_a, seg_starts, seg_slot, keep, drop_scale, num_adapters
    )


@lora_shrink.register_fake
def _(x, lora_a, seg_starts, seg_slot, keep=None, drop_scale=None):
    _check_forward(x, lora_a, seg_starts, seg_slot, keep, drop_scale)
    return x.new_empty((x.shape[0], lora_a.shape[1]))


@lora_shrink_backward.register_fake
def _(grad_s, x, lora_a, seg_starts, seg_slot, keep, drop_scale, num_adapters):
    _check_backward(grad_s, x, lora_a, seg_starts, seg_slot, keep, drop_scale, num_adapters)
    m, r = grad_s.shape
    dx = lora_a.new_empty((m, lora_a.shape[2])) if lora_a is not None else grad_s.new_empty(0)
    da = x.new_empty((num_adapters, r, x.shape[1])) if x is not None else grad_s.new_empty(0)
    return dx, da


def _setup_context(ctx, inputs, output):
    x, lora_a, seg_starts, seg_slot, keep, drop_scale = inputs
    need_dx, need_da = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    ctx.num_adapters = lora_a.shape[0]
    if not (need_dx or need_da):
        return
    # Only what the backward reads: dX needs A, dA needs X (often frozen or an input without grad).
    # X is saved, not drop(X): the kernel re-applies the saved mask (1 byte/elem instead of 2-4).
    ctx.save_for_backward(
        x if need_da else None, lora_a if need_dx else None, seg_starts, seg_slot, keep, drop_scale
    )


def _backward(ctx, grad_s):
    need_dx, need_da = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_dx or need_da):
        return None, None, None, None, None, None
    x, lora_a, seg_starts, seg_slot, keep, drop_scale = ctx.saved_tensors
    dx, da = lora_shrink_backward(grad_s, x, lora_a, seg_starts, seg_slot, keep, drop_scale, ctx.num_adapters)
    return (dx if need_dx else None), (da if need_da else None), None, None, None, None


lora_shrink.register_autograd(_backward, setup_context=_setup_context)

# What ``_backend.enable_triton_kernels`` registers for a device: each op's Triton implementation.
TRITON_IMPLEMENTATIONS = [(lora_shrink, _shrink_triton), (lora_shrink_backward, _shrink_backward_triton)]
