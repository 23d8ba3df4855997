"""Triton kernels for segmented multi-LoRA GEMMs, and their launchers.

Rows of the activations are grouped in segments; ``seg_starts`` (S+1,) int32 holds the
row offsets (``seg_starts[0] == 0``, ``seg_starts[S] == M``) and ``seg_slot`` (S,)
int32 the adapter slot of each segment, ``-1`` for rows no adapter touches. Adapter
weights are stacked and zero-padded to the largest rank, so one launch serves every
adapter whatever its rank (zero rows/columns add exact zeros to every sum).

Three kernels cover the forward and the backward of LoRA (the launchers pick the
strides, so each serves two GEMMs)::

    shrink  out[m, :] = c_a * drop(inp[m, :]) @ w[a].T        (M, R)  lora_shrink's S; dS = dOut B
    expand  out[m, :] = y[m, :] + c_a * keep[m, :] * (inp[m, :] @ w[a].T)
                                                              (M, N)  lora_expand's out; dX = dS A
    wgrad   out[a]    = c_a * inp_l[rows(a)].T @ drop(inp_r[rows(a)])
                                                              (n, P, Q)  dB, dA

where ``a`` is the adapter slot of row ``m``'s segment and ``drop(x) = x * keep / (1 - p_a)``
with the boolean ``keep`` mask drawn once per forward.

Row-tile kernels (shrink, expand) run ``cdiv(M, BLOCK_M) + S`` programs along axis 0:
that bounds ``sum_i cdiv(len_i, BLOCK_M)``, and each program finds its (segment, tile)
by scanning the S segment offsets, so the launch needs only shapes (no host sync,
no per-step tile table). Programs past the last tile do nothing.

``wgrad`` is deterministic: program (a, tile, split) reduces the row blocks
``split, split + SPLIT, ...`` of adapter ``a``'s segments in a fixed order and writes
its own slice of an fp32 workspace; the SPLIT partials are summed by ``torch.sum``
(no atomics anywhere), so equal inputs give bit-identical gradients.

Accumulation is fp32; fp32 inputs use IEEE dots unless torch allows TF32 matmuls.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

# --------------------------------------------------------------------------- kernels


@triton.jit
def _locate_row_tile(pid, seg_starts_ptr, num_segments, BLOCK_M: tl.constexpr):
    """Virtual tile ``pid`` -> (segment, first row, segment end); segment -1 past the last tile."""
    seg = -1
    row0 = 0
    row_end = 0
    tiles_before = 0
    for s in range(0, num_segments):
        start = tl.load(seg_starts_ptr + s)
        end = tl.load(seg_starts_ptr + s + 1)
        n_tiles = (end - start + BLOCK_M - 1) // BLOCK_M  # not tl.cdiv: a @jit helper (see INTERPRETED)
        hit = (pid >= tiles_before) & (pid < tiles_before + n_tiles)
        seg = tl.where(hit, s, seg)
        row0 = tl.where(hit, start + (pid - tiles_before) * BLOCK_M, row0)
        row_end = tl.where(hit, end, row_end)
        tiles_before += n_tiles
    return seg, row0, row_end


@triton.jit
def _shrink_kernel(
    in_ptr, w_ptr, out_ptr, keep_ptr, drop_scale_ptr, out_scale_ptr, seg_starts_ptr, seg_slot_ptr,
    num_segments, K, R,
    stride_in_m, stride_in_k, stride_w_a, stride_w_r, stride_w_k, stride_out_m, stride_out_r, stride_keep_m,
    HAS_DROPOUT: tl.constexpr, HAS_OUT_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """for m in tile: out[m, r] = c_a * sum_k drop(inp)[m, k] * w[a, r, k]  (0 for a == -1)."""
    seg, row0, row_end = _locate_row_tile(tl.program_id(0), seg_starts_ptr, num_segments, BLOCK_M)
    if seg >= 0:
        slot = tl.load(seg_slot_ptr + seg)
        offs_m = row0 + tl.arange(0, BLOCK_M)
        rows = offs_m.to(tl.int64)  # M * K can pass 2**31 for long batches
        mask_m = offs_m < row_end
        offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        acc = tl.full((BLOCK_M, BLOCK_R), 0.0, tl.float32)  # (BLOCK_M, BLOCK_R)
        if slot >= 0:
            w_base = w_ptr + slot.to(tl.int64) * stride_w_a
            if HAS_DROPOUT:
                drop_scale = tl.load(drop_scale_ptr + slot)
            for k0 in range(0, K, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mask_mk = mask_m[:, None] & (offs_k < K)[None, :]
                x = tl.load(
                    in_ptr + rows[:, None] * stride_in_m + offs_k[None, :] * stride_in_k,
                    mask=mask_mk,
                    other=0.0,
                )  # (BLOCK_M, BLOCK_K)
                if HAS_DROPOUT:
                    keep = tl.load(
                        keep_ptr + rows[:, None] * stride_keep_m + offs_k[None, :], mask=mask_mk, other=0
                    )
                    x = tl.where(keep != 0, x.to(tl.float32) * drop_scale, 0.0).to(x.dtype)
                w = tl.load(
                    w_base + offs_r[None, :] * stride_w_r + offs_k[:, None] * stride_w_k,
                    mask=mask_r[None, :] & (offs_k < K)[:, None],
                    other=0.0,
                )  # (BLOCK_K, BLOCK_R)
                acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
            if HAS_OUT_SCALE:
                acc = acc * tl.load(out_scale_ptr + slot)
        out_ptrs = out_ptr + rows[:, None] * stride_out_m + offs_r[None, :] * stride_out_r
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_r[None, :])


@triton.jit
def _expand_kernel(
    in_ptr, w_ptr, y_ptr, out_ptr, keep_ptr, drop_scale_ptr, out_scale_ptr, seg_starts_ptr, seg_slot_ptr,
    num_segments, N, R,
    stride_in_m, stride_in_r, stride_w_a, stride_w_n, stride_w_r, stride_y_m, stride_y_n,
    stride_out_m, stride_out_n, stride_keep_m,
    HAS_Y: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_OUT_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """for m in tile: out[m, n] = y[m, n] + c_a * keep[m, n] / (1 - p_a) * sum_r inp[m, r] * w[a, n, r]."""
    seg, row0, row_end = _locate_row_tile(tl.program_id(0), seg_starts_ptr, num_segments, BLOCK_M)
    if seg >= 0:
        slot = tl.load(seg_slot_ptr + seg)
        offs_m = row0 + tl.arange(0, BLOCK_M)
        rows = offs_m.to(tl.int64)
        mask_m = offs_m < row_end
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask_mn = mask_m[:, None] & mask_n[None, :]
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # (BLOCK_M, BLOCK_N)
        if slot >= 0:
            w_base = w_ptr + slot.to(tl.int64) * stride_w_a
            for r0 in range(0, R, BLOCK_R):
                offs_r = r0 + tl.arange(0, BLOCK_R)
                mask_r = offs_r < R
                s = tl.load(
                    in_ptr + rows[:, None] * stride_in_m + offs_r[None, :] * stride_in_r,
                    mask=mask_m[:, None] & mask_r[None, :],
                    other=0.0,
                )  # (BLOCK_M, BLOCK_R)
                w = tl.load(
                    w_base + offs_r[:, None] * stride_w_r + offs_n[None, :] * stride_w_n,
                    mask=mask_r[:, None] & mask_n[None, :],
                    other=0.0,
                )  # (BLOCK_R, BLOCK_N)
                acc = tl.dot(s, w, acc, input_precision=DOT_PRECISION)
            if HAS_OUT_SCALE:
                acc = acc * tl.load(out_scale_ptr + slot)
            if HAS_DROPOUT:
                drop_scale = tl.load(drop_scale_ptr + slot)
                keep = tl.load(
                    keep_ptr + rows[:, None] * stride_keep_m + offs_n[None, :], mask=mask_mn, other=0
                )
                acc = tl.where(keep != 0, acc * drop_scale, 0.0)
        if HAS_Y:
            y = tl.load(
                y_ptr + rows[:, None] * stride_y_m + offs_n[None, :] * stride_y_n, mask=mask_mn, other=0.0
            )
            acc += y.to(tl.float32)
        out_ptrs = out_ptr + rows[:, None] * stride_out_m + offs_n[None, :] * stride_out_n
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_mn)


@triton.jit
def _wgrad_kernel(
    left_ptr, right_ptr, out_ptr, keep_ptr, drop_scale_ptr, out_scale_ptr, seg_starts_ptr, seg_slot_ptr,
    num_segments, P, Q, SPLIT,
    stride_left_m, stride_left_p, stride_right_m, stride_right_q,
    stride_out_s, stride_out_a, stride_out_p, stride_out_q, stride_keep_m,
    HAS_DROPOUT: tl.constexpr, HAS_OUT_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):  # fmt: skip
    """for m in rows(a), blocks split::SPLIT: out[split, a, p, q] += c_a * left[m, p] * drop(right)[m, q]."""
    slot = tl.program_id(0)
    tile = tl.program_id(1)
    split = tl.program_id(2)
    num_q_tiles = (Q + BLOCK_Q - 1) // BLOCK_Q
    offs_p = (tile // num_q_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_q = (tile % num_q_tiles) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_p = offs_p < P
    mask_q = offs_q < Q
    acc = tl.full((BLOCK_P, BLOCK_Q), 0.0, tl.float32)  # (BLOCK_P, BLOCK_Q)
    if HAS_DROPOUT:
        drop_scale = tl.load(drop_scale_ptr + slot)
    for s in range(0, num_segments):
        start = tl.load(seg_starts_ptr + s)
        end = tl.load(seg_starts_ptr + s + 1)
        # Segments of other adapters become empty ranges: one fixed traversal order for all.
        end = tl.where(tl.load(seg_slot_ptr + s) == slot, end, start)
        for m0 in range(start + split * BLOCK_M, end, SPLIT * BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            rows = offs_m.to(tl.int64)
            mask_m = offs_m < end
            left_t = tl.load(
                left_ptr + rows[None, :] * stride_left_m + offs_p[:, None] * stride_left_p,
                mask=mask_p[:, None] & mask_m[None, :],
                other=0.0,
            )  # (BLOCK_P, BLOCK_M)
            mask_mq = mask_m[:, None] & mask_q[None, :]
            right = tl.load(
                right_ptr + rows[:, None] * stride_right_m + offs_q[None, :] * stride_right_q,
                mask=mask_mq,
                other=0.0,
            )  # (BLOCK_M, BLOCK_Q)
            if HAS_DROPOUT:
                keep = tl.load(
                    keep_ptr + rows[:, None] * stride_keep_m + offs_q[None, :], mask=mask_mq, other=0
                )
                right = tl.where(keep != 0, right.to(tl.float32) * drop_scale, 0.0).to(right.dtype)
            acc = tl.dot(left_t, right, acc, input_precision=DOT_PRECISION)
    if HAS_OUT_SCALE:
        acc = acc * tl.load(out_scale_ptr + slot)
    out_ptrs = (
        out_ptr
        + split.to(tl.int64) * stride_out_s
        + slot.to(tl.int64) * stride_out_a
        + offs_p[:, None] * stride_out_p
        + offs_q[None, :] * stride_out_q
    )
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_q[None, :])


KERNELS = {"shrink": _shrink_kernel, "expand": _expand_kernel, "wgrad": _wgrad_kernel}

# Decided when this module was imported: with TRITON_INTERPRET=1, @triton.jit returned
# interpreter functions that run on CPU tensors (the test suite's way to run kernels).
# The tests may re-import this module with the variable set after Triton itself was
# imported without it (peft imports Triton); that works because the kernels call only
# tl builtins (tl.full, not tl.zeros; integer ceil-division, not tl.cdiv): Triton's own
# @jit helpers stay compiled-mode functions that the interpreter cannot call.
INTERPRETED = not isinstance(_shrink_kernel, triton.runtime.JITFunction)

# --------------------------------------------------------------------------- block sizes


def _interpreting() -> bool:
    return INTERPRETED


@functools.lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sm_count(t: torch.Tensor) -> int:
    if t.device.type != "cuda":
        return 8  # interpreter: any small number; only the split heuristic reads it
    return _num_sms(t.device.index if t.device.index is not None else torch.cuda.current_device())


def _rank_block(r: int, cap: int) -> int:
    # tl.dot needs every block dim >= 16; ranks above `cap` loop (expand) or tile (shrink).
    return min(cap, max(16, triton.next_power_of_2(r)))


def _feature_block(dtype: torch.dtype) -> int:
    """Columns per tile along N or K. fp32 operands take twice the registers of 16-bit ones, and
    IEEE fp32 dots run on FMA units with both operands in registers: 128-wide fp32 tiles spill
    (up to 20 KB of stack per thread in wgrad, see benchmarks/compile_check.py), 64-wide ones do not."""
    return 64 if dtype == torch.float32 else 128


def _row_block(m: int, programs_per_row_tile: int, t: torch.Tensor) -> int:
    """Rows per tile: 64 when that still fills ~2 waves of SMs, else smaller tiles for more programs."""
    if _interpreting():
        return 16
    target = 2 * _sm_count(t)
    for block in (64, 32):
        if triton.cdiv(m, block) * programs_per_row_tile >= target:
            return block
    return 16


def _dot_precision(dtype: torch.dtype) -> str:
    # Match torch: fp32 matmuls use TF32 only when the user allowed it (the default is IEEE).
    if dtype == torch.float32 and not _torch_allows_tf32():
        return "ieee"
    return "tf32"


def _torch_allows_tf32() -> bool:
    # torch >= 2.9 has `fp32_precision` ("tf32" / "ieee" / "none"); once it is set (transformers 5
    # does for `tf32=True`), reading the legacy `allow_tf32` flag raises.
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is not None and precision != "none":
        return precision == "tf32"
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:
        return False


def _device_of(t: torch.Tensor):
    # Triton launches on the current CUDA device; make it the tensors' one (multi-GPU hosts).
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _dummy(t: torch.Tensor) -> torch.Tensor:
    return t  # pointer for an argument the kernel never reads (its HAS_* flag is off)


# --------------------------------------------------------------------------- launchers


def segmented_shrink(
    inp: torch.Tensor,
    w: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
    *,
    keep: torch.Tensor | None = None,
    drop_scale: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out[m] = out_scale[a] * drop(inp[m]) @ w[a].T`` per segment; zeros for unadapted rows.

    inp (M, K); w (n, R, K), any strides; keep (M, K) bool or None; drop_scale, out_scale
    (n,) fp32 or None. Returns (M, R) in inp.dtype.
    """
    m, k = inp.shape
    r = w.shape[1]
    out = torch.empty((m, r), device=inp.device, dtype=inp.dtype)  # (M, R)
    block_r = _rank_block(r, 128)
    n_r_tiles = triton.cdiv(r, block_r)
    num_segments = seg_slot.shape[0]
    block_m = _row_block(m, n_r_tiles, inp)
    # The K loop's tile: 128 columns for small ranks, 64 for large; halved in fp32 (see _feature_block).
    block_k = (
        32 if _interpreting() else (128 if block_r <= 32 else 64) // (2 if inp.dtype == torch.float32 else 1)
    )
    keep_u8 = keep.contiguous().view(torch.uint8) if keep is not None else None  # rows of K bytes
    grid = (triton.cdiv(m, block_m) + num_segments, n_r_tiles)
    with _device_of(inp):
        _shrink_kernel[grid](
            inp, w, out, keep_u8 if keep_u8 is not None else _dummy(inp),
            drop_scale if drop_scale is not None else _dummy(seg_starts),
            out_scale if out_scale is not None else _dummy(seg_starts),
            seg_starts, seg_slot,
            num_segments, k, r,
            inp.stride(0), inp.stride(1), w.stride(0), w.stride(1), w.stride(2), out.stride(0), out.stride(1),
            keep_u8.stride(0) if keep_u8 is not None else 0,
            HAS_DROPOUT=keep is not None, HAS_OUT_SCALE=out_scale is not None,
            DOT_PRECISION=_dot_precision(inp.dtype), BLOCK_M=block_m, BLOCK_R=block_r, BLOCK_K=block_k,
            num_warps=4, num_stages=3,
        )  # fmt: skip
    return out


def segmented_expand(
    inp: torch.Tensor,
    w: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
    *,
    y: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    drop_scale: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``out[m] = y[m] + out_scale[a] * keep[m] / (1 - p_a) * (inp[m] @ w[a].T)`` per segment.

    inp (M, R); w (n, N, R), any strides; y (M, N) or None (then 0); keep (M, N) bool or
    None. Unadapted rows get ``y`` (or 0). Returns (M, N) in ``out_dtype`` (default inp's).
    """
    m, r = inp.shape
    n = w.shape[1]
    out = torch.empty((m, n), device=inp.device, dtype=out_dtype or inp.dtype)  # (M, N)
    block_n = 32 if _interpreting() else _feature_block(inp.dtype)
    n_n_tiles = triton.cdiv(n, block_n)
    block_m = _row_block(m, n_n_tiles, inp)
    block_r = _rank_block(r, 64)
    num_segments = seg_slot.shape[0]
    keep_u8 = keep.contiguous().view(torch.uint8) if keep is not None else None  # rows of K bytes
    grid = (triton.cdiv(m, block_m) + num_segments, n_n_tiles)
    with _device_of(inp):
        _expand_kernel[grid](
            inp, w, y if y is not None else _dummy(inp), out,
            keep_u8 if keep_u8 is not None else _dummy(inp),
            drop_scale if drop_scale is not None else _dummy(seg_starts),
            out_scale if out_scale is not None else _dummy(seg_starts),
            seg_starts, seg_slot,
            num_segments, n, r,
            inp.stride(0), inp.stride(1), w.stride(0), w.stride(1), w.stride(2),
            y.stride(0) if y is not None else 0, y.stride(1) if y is not None else 0,
            out.stride(0), out.stride(1), keep_u8.stride(0) if keep_u8 is not None else 0,
            HAS_Y=y is not None, HAS_DROPOUT=keep is not None, HAS_OUT_SCALE=out_scale is not None,
            DOT_PRECISION=_dot_precision(inp.dtype),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r,
            num_warps=4, num_stages=2,
        )  # fmt: skip
    return out


def wgrad_split(total_rows: int, num_adapters: int, tiles: int, block_m: int, t: torch.Tensor) -> int:
    """Row splits per (adapter, tile) so that ~2 waves of SMs have work; from shapes only.

    Shapes, never data, decide SPLIT, so a given batch always reduces in the same order.
    Each split keeps >= 4 row blocks on average so the fp32 partials stay cheap.
    """
    if _interpreting():
        return 1
    programs = max(1, num_adapters * tiles)
    want = triton.cdiv(2 * _sm_count(t), programs)
    rows_per_adapter = max(1, total_rows // max(1, num_adapters))
    return max(1, min(want, rows_per_adapter // (4 * block_m), 16))


def segmented_wgrad(
    left: torch.Tensor,
    right: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
    num_adapters: int,
    *,
    keep: torch.Tensor | None = None,
    drop_scale: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    split: int | None = None,
) -> torch.Tensor:
    """``out[a] = out_scale[a] * left[rows(a)].T @ drop(right[rows(a)])``, deterministic.

    left (M, P); right (M, Q); keep (M, Q) bool or None. Adapters without rows get zeros.
    Returns (num_adapters, P, Q) in ``out_dtype`` (default left's).
    """
    m, p = left.shape
    q = right.shape[1]
    out_dtype = out_dtype or left.dtype
    interp = _interpreting()
    # A rank side gets a rank-sized block, a feature side (N or K) 128 columns
    # (64 in fp32, see _feature_block).
    feature_block = 32 if interp else _feature_block(left.dtype)
    block_p = _rank_block(p, 64) if p <= 64 else feature_block
    block_q = _rank_block(q, 64) if q <= 64 else feature_block
    block_m = 16 if interp else (32 if left.dtype == torch.float32 else 64)
    tiles = triton.cdiv(p, block_p) * triton.cdiv(q, block_q)
    if split is None:
        split = wgrad_split(m, num_adapters, tiles, block_m, left)
    if split == 1:
        out = torch.empty((num_adapters, p, q), device=left.device, dtype=out_dtype)  # (n, P, Q)
        out_stride_s = 0
    else:
        out = torch.empty((split, num_adapters, p, q), device=left.device, dtype=torch.float32)
        out_stride_s = out.stride(0)
    num_segments = seg_slot.shape[0]
    keep_u8 = keep.contiguous().view(torch.uint8) if keep is not None else None  # rows of K bytes
    stride_a, stride_p, stride_q = out.stride()[-3:]
    if num_adapters > 0:
        with _device_of(left):
            _wgrad_kernel[(num_adapters, tiles, split)](
                left, right, out, keep_u8 if keep_u8 is not None else _dummy(left),
                drop_scale if drop_scale is not None else _dummy(seg_starts),
                out_scale if out_scale is not None else _dummy(seg_starts),
                seg_starts, seg_slot,
                num_segments, p, q, split,
                left.stride(0), left.stride(1), right.stride(0), right.stride(1),
                out_stride_s, stride_a, stride_p, stride_q, keep_u8.stride(0) if keep_u8 is not None else 0,
                HAS_DROPOUT=keep is not None, HAS_OUT_SCALE=out_scale is not None,
                DOT_PRECISION=_dot_precision(left.dtype),
                BLOCK_M=block_m, BLOCK_P=block_p, BLOCK_Q=block_q,
                num_warps=4, num_stages=3,
            )  # fmt: skip
    if split == 1:
        return out
    # A fixed-order reduction over the split axis (torch.sum uses no atomics).
    return out.sum(dim=0).to(out_dtype)
