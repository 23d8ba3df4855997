"""Segment metadata shared by the multi-LoRA ops.

A batch of M rows is cut into S contiguous segments. Two small int32 tensors describe it:

- ``seg_starts`` (S+1,): row offsets, ``seg_starts[0] == 0``, non-decreasing,
  ``seg_starts[S] == M`` (empty segments allowed);
- ``seg_slot`` (S,): the adapter slot of each segment in the stacked weights,
  ``-1`` for rows that no adapter touches (e.g. a run whose adapter skips this module).

The trainer builds them once per step from Python ints (``segment_tensors``); the ops
never read them on the host except in the pure-torch reference (``host_segments``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def segment_tensors(
    lengths: Sequence[int], slots: Sequence[int], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(seg_starts (S+1,), seg_slot (S,)) int32 tensors from per-segment row counts and adapter slots.

    Validated here, on the host, so the kernels can trust them.
    """
    if len(lengths) != len(slots):
        raise ValueError(f"lengths has {len(lengths)} segments but slots has {len(slots)}")
    if len(lengths) == 0:
        raise ValueError("a segment layout needs at least one segment")
    if any(int(n) < 0 for n in lengths):
        raise ValueError(f"segment lengths must be >= 0, got {list(lengths)}")
    if any(int(a) < -1 for a in slots):
        raise ValueError(f"adapter slots must be >= -1 (-1: no adapter), got {list(slots)}")
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + int(n))
    seg_starts = torch.tensor(starts, dtype=torch.int32)
    seg_slot = torch.tensor([int(a) for a in slots], dtype=torch.int32)
    if device is not None and torch.device(device).type != "cpu":
        # Pinned + non_blocking: the copy does not make the host wait for the GPU.
        seg_starts = seg_starts.pin_memory().to(device, non_blocking=True)
        seg_slot = seg_slot.pin_memory().to(device, non_blocking=True)
    return seg_starts, seg_slot


def check_tensor(
    op: str,
    name: str,
    t: torch.Tensor,
    shape: tuple[int | torch.SymInt | None, ...],
    dtype: torch.dtype | str,
    device: torch.device,
) -> None:
    """``t`` has ``shape`` (None: any size in that dim), ``dtype`` (``"float"``: any floating dtype)
    and ``device``: metadata only, no sync. ``torch._check_*`` (ValueError / TypeError), so the
    same checks run in the real kernels and, on symbolic shapes, in the fake ones under torch.compile."""

    def wrong_shape() -> str:
        want = tuple("*" if d is None else d for d in shape)
        return f"{op}: {name} has shape {tuple(t.shape)}, expected {want}"

    torch._check_value(t.dim() == len(shape), wrong_shape)
    for size, want in zip(t.shape, shape, strict=True):
        if want is not None:
            torch._check_value(size == want, wrong_shape)
    if dtype == "float":
        torch._check_type(t.is_floating_point(), lambda: f"{op}: {name} is {t.dtype}, expected a float dtype")
    else:
        torch._check_type(t.dtype == dtype, lambda: f"{op}: {name} is {t.dtype}, expected {dtype}")
    torch._check_value(t.device == device, lambda: f"{op}: {name} is on {t.device}, expected {device}")


def check_layout(
    op: str,
    device: torch.device,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
    num_adapters: int | torch.SymInt | None,
    *,
    keep: torch.Tensor | None = None,
    keep_shape: tuple[int | torch.SymInt | None, ...] = (),
    drop_scale: torch.Tensor | None = None,
) -> None:
    """The non-float operands every op reads: int32 segment tensors of matching lengths and, for
    dropout, a bool keep mask of ``keep_shape`` with its (n,) float drop scales (both or neither),
    all on ``device``. Segment VALUES (offsets within [0, M], slots < n) are the caller's contract:
    ``segment_tensors`` validates them on the host."""
    check_tensor(op, "seg_slot", seg_slot, (None,), torch.int32, device)
    check_tensor(op, "seg_starts", seg_starts, (seg_slot.shape[0] + 1,), torch.int32, device)
    torch._check_value(
        (keep is None) == (drop_scale is None),
        lambda: f"{op}: keep and drop_scale go together (dropout on) or are both None",
    )
    if keep is not None:
        check_tensor(op, "keep", keep, keep_shape, torch.bool, device)
        check_tensor(op, "drop_scale", drop_scale, (num_adapters,), "float", device)


def check_kernel_scalars(op: str, **scalars: torch.Tensor | None) -> None:
    """The Triton kernels load per-adapter scalars (scales, drop scales) as fp32."""
    for name, t in scalars.items():
        if t is not None:
            message = f"{op}: {name} is {t.dtype}, the kernels need fp32"
            torch._check_type(t.dtype == torch.float32, lambda message=message: message)


def host_segments(seg_starts: torch.Tensor, seg_slot: torch.Tensor) -> list[tuple[int, int, int]]:
    """[(start, end, adapter slot)] on the host. Reads the tensors: a sync on CUDA (reference only)."""
    starts = seg_starts.tolist()
    return [(starts[i], starts[i + 1], a) for i, a in enumerate(seg_slot.tolist())]


def adapter_row_ranges(segments: Sequence[tuple[int, int, int]], slot: int) -> list[tuple[int, int]]:
    """The non-empty row ranges of adapter ``slot``, in batch order."""
    return [(s, e) for s, e, a in segments if a == slot and e > s]


def check_segments(
    seg_starts: torch.Tensor, seg_slot: torch.Tensor, num_rows: int, num_adapters: int
) -> None:
    """Raise ValueError unless the tensors lay out ``num_rows`` rows (reads them: debug and tests only)."""
    if seg_starts.dtype != torch.int32 or seg_slot.dtype != torch.int32:
        raise ValueError("seg_starts and seg_slot must be int32")
    if seg_starts.shape != (seg_slot.shape[0] + 1,):
        raise ValueError(
            f"seg_starts must have S+1={seg_slot.shape[0] + 1} entries, got {tuple(seg_starts.shape)}"
        )
    starts = seg_starts.tolist()
    if (
        starts[0] != 0
        or starts[-1] != num_rows
        or any(b < a for a, b in zip(starts, starts[1:], strict=False))
    ):
        raise ValueError(f"seg_starts must rise from 0 to {num_rows}, got {starts}")
    bad = [a for a in seg_slot.tolist() if a < -1 or a >= num_adapters]
    if bad:
        raise ValueError(f"seg_slot entries must be in [-1, {num_adapters}), got {bad}")
