"""``rapidfire::lora_expand``: per-segment ``Y + scale_i * S_i B_i^T``, with its backward.

Semantics (``-1`` segments pass ``Y`` through)::

    for (start, end, a) in segments:
        out[start:end] = Y[start:end]                                          if a == -1
        out[start:end] = Y[start:end] + scale[a] * S[start:end] @ B[a].T        # (len, N)

Backward, with dOut = dL/dout (dY is dOut itself)::

    dS[start:end] = scale[a] * dOut[start:end] @ B[a]                          # (len, R)
    dB[a]         = scale[a] * sum over a's segments of dOut[start:end].T @ S[start:end]   # (N, R)

Shapes: Y (M, N); S (M, R); B (n, N, R) stacked, zero-padded to the largest rank;
scale (n,) fp32 (``alpha / r`` or ``alpha / sqrt(r)`` for rsLoRA). S and B share one dtype (the
LoRA compute dtype); Y may have another (the base layer's output, e.g. fp32 while LoRA runs in
bf16): the output is in Y's dtype, accumulated in fp32 and rounded once, and dOut is cast to
S's dtype for dS and dB, as autograd does for PEFT's ``result + lora_out * scaling``.

dB is reduced per adapter in a fixed order (no atomics): deterministic. CUDA runs the
Triton kernels (``_kernels``); every other device runs the reference below.
"""

from __future__ import annotations

import torch

from . import _backend
from .segments import adapter_row_ranges, check_layout, check_operands, check_shapes, host_segments

# --------------------------------------------------------------------------- reference


def lora_expand_reference(
    y: torch.Tensor,
    s: torch.Tensor,
    lora_b: torch.Tensor,
    scales: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_adapter: torch.Tensor,
) -> torch.Tensor:
    """The per-segment loop above, in plain torch (the CPU path and the test oracle)."""
    out = y.clone(memory_format=torch.contiguous_format)  # (M, N), contiguous like the kernels'
    scale_list = scales.tolist()
    for start, end, slot in host_segments(seg_starts, seg_adapter):
        if slot >= 0 and end > start:
            # PEFT's order of operations: lora_B(lora_A(x)) * scaling, then added to the base output.
            out[start:end] = y[start:end] + (s[start:end] @ lora_b[slot].T) * scale_list[slot]
    return out


def lora_expand_backward_reference(
    grad_out: torch.Tensor,
    s: torch.Tensor,
    lora_b: torch.Tensor,
    scales: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_adapter: torch.Tensor,
    need_ds: bool = True,
    need_db: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dS (M, R), dB (n, N, R)); an unneeded one is an empty tensor."""
    grad_out = grad_out.to(s.dtype)
    segments = host_segments(seg_starts, seg_adapter)
    scale_list = scales.tolist()
    ds = s.new_zeros(s.shape) if need_ds else s.new_empty(0)
    db = lora_b.new_zeros(lora_b.shape) if need_db else lora_b.new_empty(0)
    for slot in range(lora_b.shape[0]):
        ranges = adapter_row_ranges(segments, slot)
        if not ranges:
            continue
        if need_db:
            g = torch.cat([grad_out[a:b] for a, b in ranges])  # (M_a, N)
            sa = torch.cat([s[a:b] for a, b in ranges])  # (M_a, R)
            db[slot] = (g * scale_list[slot]).T @ sa
        if need_ds:
            for a, b in ranges:
                ds[a:b] = (grad_out[a:b] * scale_list[slot]) @ lora_b[slot]
    return ds, db


# --------------------------------------------------------------------------- triton


def _check_triton_operands(op, out_like, s, lora_b, scales, seg_starts, seg_adapter, **same_dtype):
    """out_like: Y (forward) or dOut (backward), (M, N)."""
    check_operands(op, s.dtype, s=s, lora_b=lora_b, **same_dtype)
    (m, r), (n, cols) = s.shape, lora_b.shape[:2]
    check_shapes(op, y_or_grad=(out_like, (m, cols)), s=(s, (m, r)), lora_b=(lora_b, (n, cols, r)))
    check_layout(op, s.device, m, n, seg_starts, seg_adapter, scales=scales)


def _expand_triton(y, s, lora_b, scales, seg_starts, seg_adapter):
    _check_triton_operands("lora_expand", y, s, lora_b, scales, seg_starts, seg_adapter)
    if y.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"lora_expand: y is {y.dtype}; the kernels take fp16, bf16 or fp32")
    return _backend.kernels.segmented_wide(
        s, lora_b, seg_starts, seg_adapter, y=y, out_scale=scales, out_dtype=y.dtype
    )


def _expand_backward_triton(grad_out, s, lora_b, scales, seg_starts, seg_adapter, need_ds, need_db):
    _check_triton_operands("lora_expand_backward", grad_out, s, lora_b, scales, seg_starts, seg_adapter)
    k = _backend.kernels
    grad_out = grad_out.to(s.dtype)  # once for both GEMMs (a no-op when Y shares S's dtype)
    ds = s.new_empty(0)
    db = lora_b.new_empty(0)
    if need_ds:
        # w[a, r, n] = B[a, n, r]: the transposed view, no copy.
        ds = k.segmented_narrow(grad_out, lora_b.transpose(1, 2), seg_starts, seg_adapter, out_scale=scales)
    if need_db:
        db = k.segmented_wgrad(
            grad_out, s, seg_starts, seg_adapter, lora_b.shape[0], out_scale=scales,
            out_dtype=lora_b.dtype,
        )  # fmt: skip
    return ds, db


# --------------------------------------------------------------------------- registration


@torch.library.custom_op("rapidfire::lora_expand", mutates_args=())
def lora_expand(
    y: torch.Tensor,
    s: torch.Tensor,
    lora_b: torch.Tensor,
    scales: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_adapter: torch.Tensor,
) -> torch.Tensor:
    """out (M, N) = Y + per-segment scale_a * S B_a^T; see the module docstring."""
    if _backend.use_triton(y):  # CUDA, or forced ("triton" under the interpreter)
        return _expand_triton(y, s, lora_b, scales, seg_starts, seg_adapter)
    return lora_expand_reference(y, s, lora_b, scales, seg_starts, seg_adapter)


@torch.library.custom_op("rapidfire::lora_expand_backward", mutates_args=())
def lora_expand_backward(
    grad_out: torch.Tensor,
    s: torch.Tensor,
    lora_b: torch.Tensor,
    scales: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_adapter: torch.Tensor,
    need_ds: bool,
    need_db: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dS (M, R), dB (n, N, R)) of lora_expand; unneeded outputs are empty."""
    if _backend.use_triton(s):
        return _expand_backward_triton(grad_out, s, lora_b, scales, seg_starts, seg_adapter, need_ds, need_db)
    return lora_expand_backward_reference(
        grad_out, s, lora_b, scales, seg_starts, seg_adapter, need_ds, need_db
    )


@lora_expand.register_fake
def _(y, s, lora_b, scales, seg_starts, seg_adapter):
    return y.new_empty(y.shape)


@lora_expand_backward.register_fake
def _(grad_out, s, lora_b, scales, seg_starts, seg_adapter, need_ds, need_db):
    ds = s.new_empty(s.shape) if need_ds else s.new_empty(0)
    db = lora_b.new_empty(lora_b.shape) if need_db else lora_b.new_empty(0)
    return ds, db


def _setup_context(ctx, inputs, output):
    y, s, lora_b, scales, seg_starts, seg_adapter = inputs
    ctx.save_for_backward(s, lora_b, scales, seg_starts, seg_adapter)


def _backward(ctx, grad_out):
    s, lora_b, scales, seg_starts, seg_adapter = ctx.saved_tensors
    need_dy, need_ds, need_db = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    ds = db = None
    if need_ds or need_db:
        ds, db = lora_expand_backward(grad_out, s, lora_b, scales, seg_starts, seg_adapter, need_ds, need_db)
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
