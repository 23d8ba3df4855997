"""``rapidfire::lora_expand``: per-segment ``Y + scale_i * S_i B_i^T``, with its backward.

Semantics (rows of a segment with adapter slot ``a``; ``-1`` segments pass ``Y`` through)::

    for (start, end, a) in segments:
        out[start:end] = Y[start:end]                                          if a == -1
        out[start:end] = Y[start:end] + scale[a] * S[start:end] @ B[a].T        # (len, N)

Backward, with dOut = dL/dout (dY is dOut itself)::

    dS[start:end] = scale[a] * dOut[start:end] @ B[a]                          # (len, R), needs B
    dB[a]         = scale[a] * sum over a's segments of dOut[start:end].T @ S[start:end]   # (N, R), needs S

Shapes: Y (M, N); S (M, R); B (n, N, R) stacked, zero-padded to the largest rank;
scale (n,) (fp32 for the kernels; ``alpha / r`` or ``alpha / sqrt(r)`` for rsLoRA). S and B share
one dtype (the LoRA compute dtype); Y may have another (the base layer's output, e.g. fp32 while
LoRA runs in bf16): the output is in Y's dtype, accumulated in fp32 and rounded once, and dOut is
cast to the compute dtype for dS and dB, as autograd does for PEFT's ``result + lora_out * scaling``.

Autograd saves S only when B needs a gradient and B only when S does; Y is never saved. dB is
reduced per adapter in a fixed order (no atomics): deterministic. The op's default
implementation is the reference below, on every device; the Triton kernels (``_kernels``) are
registered for a device only when enabled (``_backend``).
"""

from __future__ import annotations

import torch

from . import _backend
from .segments import adapter_row_ranges, check_kernel_scalars, check_layout, check_tensor, host_segments

# --------------------------------------------------------------------------- reference


def lora_expand_reference(
    y: torch.Tensor,
    s: torch.Tensor,
    lora_b: torch.Tensor,
    scales: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
) -> torch.Tensor:
    """The per-segment loop above, in plain torch (the default implementation and the test oracle)."""
    out = y.clone(memory_format=torch.contiguous_format)  # (M, N), contiguous like the kernels'
    scale_list = scales.tolist()
    for start, end, slot in host_segments(seg_starts, seg_slot):
        if slot >= 0 and end > start:
            # PEFT's order of operations: lora_B(lora_A(x)) * scaling, then added to the base output.
            out[start:end] = y[start:end] + (s[start:end] @ lora_b[slot].T) * scale_list[slot]
    return out


def lora_expand_backward_reference(
    grad_out: torch.Tensor,
    s: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    scales: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dS (M, R) if lora_b is given, dB (n, N, R) if s is given); one not computed is empty."""
    grad_out = grad_out.to(_compute_dtype(grad_out, s, lora_b))
    segments = host_segments(seg_starts, seg_slot)
    scale_list = scales.tolist()
    m, cols = grad_out.shape
    ds = lora_b.new_zeros((m, lora_b.shape[2])) if lora_b is not None else grad_out.new_empty(0)
    db = s.new_zeros((len(scale_list), cols, s.shape[1])) if s is not None else grad_out.new_empty(0)
    for slot in range(len(scale_list)):
        ranges = adapter_row_ranges(segments, slot)
        if not ranges:
            continue
        if s is not None:
            g = torch.cat([grad_out[a:b] for a, b in ranges])  # (M_a, N)
            sa = torch.cat([s[a:b] for a, b in ranges])  # (M_a, R)
            db[slot] = (g * scale_list[slot]).T @ sa
        if lora_b is not None:
            for a, b in ranges:
                ds[a:b] = (grad_out[a:b] * scale_list[slot]) @ lora_b[slot]
    return ds, db


def _compute_dtype(grad_out, s, lora_b) -> torch.dtype:
    """The LoRA compute dtype (S's and B's); dOut's own when neither is there (nothing computed)."""
    return lora_b.dtype if lora_b is not None else s.dtype if s is not None else grad_out.dtype


# --------------------------------------------------------------------------- contract


def _check_forward(y, s, lora_b, scales, seg_starts, seg_slot) -> None:
    """Shapes, dtypes and devices (metadata only): by the fake kernel and every real one."""
    op, device = "lora_expand", s.device
    check_tensor(op, "s", s, (None, None), "float", device)
    m, r = s.shape
    check_tensor(op, "y", y, (m, None), "float", device)
    check_tensor(op, "lora_b", lora_b, (None, y.shape[1], r), s.dtype, device)
    check_tensor(op, "scales", scales, (lora_b.shape[0],), "float", device)
    check_layout(op, device, seg_starts, seg_slot, lora_b.shape[0])


def _check_backward(grad_out, s, lora_b, scales, seg_starts, seg_slot) -> None:
    op, device = "lora_expand_backward", grad_out.device
    check_tensor(op, "grad_out", grad_out, (None, None), "float", device)
    check_tensor(op, "scales", scales, (None,), "float", device)
    m, cols = grad_out.shape
    r = None
    if s is not None:
        check_tensor(op, "s", s, (m, None), "float", device)
        r = s.shape[1]
    if lora_b is not None:
        check_tensor(
            op, "lora_b", lora_b, (scales.shape[0], cols, r), s.dtype if s is not None else "float", device
        )
    check_layout(op, device, seg_starts, seg_slot, scales.shape[0])


# --------------------------------------------------------------------------- triton


def _expand_triton(y, s, lora_b, scales, seg_starts, seg_slot):
    """lora_expand's Triton kernel (registered per device by ``_backend.enable_triton_kernels``)."""
    _check_forward(y, s, lora_b, scales, seg_starts, seg_slot)
    if s.dtype not in _backend.KERNEL_DTYPES or y.dtype not in _backend.KERNEL_DTYPES:
        return lora_expand_reference(y, s, lora_b, scales, seg_starts, seg_slot)
    check_kernel_scalars("lora_expand", scales=scales)
    return _backend.kernels.segmented_expand(
        s, lora_b, seg_starts, seg_slot, y=y, out_scale=scales, out_dtype=y.dtype
    )


def _expand_backward_triton(grad_out, s, lora_b, scales, seg_starts, seg_slot):
    _check_backward(grad_out, s, lora_b, scales, seg_starts, seg_slot)
    dtype = _compute_dtype(grad_out, s, lora_b)
    if dtype not in _backend.KERNEL_DTYPES or grad_out.dtype not in _backend.KERNEL_DTYPES:
        return lora_expand_backward_reference(grad_out, s, lora_b, scales, seg_starts, seg_slot)
    check_kernel_scalars("lora_expand_backward", scales=scales)
    kernels = _backend.kernels
    grad_out = grad_out.to(dtype)  # once for both GEMMs (a no-op when Y shares S's dtype)
    ds = db = grad_out.new_empty(0)
    if lora_b is not None:
        # w[a, r, n] = B[a, n, r]: the transposed view, no copy.
        ds = kernels.segmented_shrink(
            grad_out, lora_b.transpose(1, 2), seg_starts, seg_slot, out_scale=scales
        )
    if s is not None:
        db = kernels.segmented_wgrad(
            grad_out, s, seg_starts, seg_slot, scales.shape[0], out_scale=scales, out_dtype=s.dtype
        )
    return ds, db


# --------------------------------------------------------------------------- registration


@torch.library.custom_op("rapidfire::lora_expand", mutates_args=())
def lora_expand(
    y: torch.Tensor,
    s: torch.Tensor,
    lora_b: torch.Tensor,
    scales: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
) -> torch.Tensor:
    """out (M, N) = Y + per-segment scale_a * S B_a^T; see the module docstring. Default: the reference."""
    _check_forward(y, s, lora_b, scales, seg_starts, seg_slot)
    return lora_expand_reference(y, s, lora_b, scales, seg_starts, seg_slot)


@torch.library.custom_op("rapidfire::lora_expand_backward", mutates_args=())
def lora_expand_backward(
    grad_out: torch.Tensor,
    s: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    scales: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dS (M, R), dB (n, N, R)) of lora_expand: dS when ``lora_b`` is given (it needs B), dB when
    ``s`` is (it needs S); one not computed is an empty tensor. Default: the reference."""
    _check_backward(grad_out, s, lora_b, scales, seg_starts, seg_slot)
    return lora_expand_backward_reference(grad_out, s, lora_b, scales, seg_starts, seg_slot)


@lora_expand.register_fake
def _(y, s, lora_b, scales, seg_starts, seg_slot):
    _check_forward(y, s, lora_b, scales, seg_starts, seg_slot)
    return y.new_empty(y.shape)


@lora_expand_backward.register_fake
def _(grad_out, s, lora_b, scales, seg_starts, seg_slot):
    _check_backward(grad_out, s, lora_b, scales, seg_starts, seg_slot)
    m, cols = grad_out.shape
    ds = lora_b.new_empty((m, lora_b.shape[2])) if lora_b is not None else grad_out.new_empty(0)
    db = s.new_empty((scales.shape[0], cols, s.shape[1])) if s is not None else grad_out.new_empty(0)
    return ds, db


def _setup_context(ctx, inputs, output):
    y, s, lora_b, scales, seg_starts, seg_slot = inputs
    need_ds, need_db = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    if not (need_ds or need_db):
        return  # dY = dOut needs nothing saved
    # Only what the backward reads: dS needs B, dB needs S.
    ctx.save_for_backward(s if need_db else None, lora_b if need_ds else None, scales, seg_starts, seg_slot)


def _backward(ctx, grad_out):
    need_dy, need_ds, need_db = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    ds = db = None
    if need_ds or need_db:
        s, lora_b, scales, seg_starts, seg_slot = ctx.saved_tensors
        ds, db = lora_expand_backward(grad_out, s, lora_b, scales, seg_starts, seg_slot)
    # dY = dOut: the base output enters the sum with weight 1 on every row.
    return (
        (grad_out if need_dy else None),
        (ds if need_ds else None),
        (db if need_db else None),
        None,
        None,
        None,
    )


lora_expand.register_autograd(_backward, setup_context=_setup_context)

# What ``_backend.enable_triton_kernels`` registers for a device: each op's Triton implementation.
TRITON_IMPLEMENTATIONS = [(lora_expand, _expand_triton), (lora_expand_backward, _expand_backward_triton)]
