"""Segment metadata shared by the multi-LoRA ops.

A batch of M rows is cut into S contiguous segments. Two small int32 tensors describe it:

- ``seg_starts`` (S+1,): row offsets, ``seg_starts[0] == 0``, non-decreasing,
  ``seg_starts[S] == M`` (empty segments allowed);
- ``seg_adapter`` (S,): the adapter slot of each segment in the stacked weights,
  ``-1`` for rows that no adapter touches (e.g. a run whose adapter skips this module).

The trainer builds them once per step from Python ints (``segment_tensors``); the ops
never read them on the host except in the pure-torch reference (``host_segments``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def segment_tensors(
    lengths: Sequence[int], adapters: Sequence[int], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(seg_starts (S+1,), seg_adapter (S,)) int32 tensors from per-segment row counts and slots.

    Validated here, on the host, so the kernels can trust them.
    """
    if len(lengths) != len(adapters):
        raise ValueError(f"lengths has {len(lengths)} segments but adapters has {len(adapters)}")
    if len(lengths) == 0:
        raise ValueError("a segment layout needs at least one segment")
    if any(int(n) < 0 for n in lengths):
        raise ValueError(f"segment lengths must be >= 0, got {list(lengths)}")
    if any(int(a) < -1 for a in adapters):
        raise ValueError(f"adapter slots must be >= -1 (-1: no adapter), got {list(adapters)}")
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + int(n))
    seg_starts = torch.tensor(starts, dtype=torch.int32)
    seg_adapter = torch.tensor([int(a) for a in adapters], dtype=torch.int32)
    if device is not None and torch.device(device).type != "cpu":
        # Pinned + non_blocking: the copy does not make the host wait for the GPU.
        seg_starts = seg_starts.pin_memory().to(device, non_blocking=True)
        seg_adapter = seg_adapter.pin_memory().to(device, non_blocking=True)
    return seg_starts, seg_adapter


def check_operands(op: str, expected_dtype: torch.dtype, **tensors: torch.Tensor) -> None:
    """Operand checks for the kernels (host metadata only, no sync): one float dtype, one device."""
    device = next(iter(tensors.values())).device
    for name, t in tensors.items():
        if t.dtype != expected_dtype:
            raise TypeError(f"{op}: {name} is {t.dtype} but the kernels need all in {expected_dtype}")
        if t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device}, expected {device}")


def check_shapes(op: str, **tensors: tuple[torch.Tensor, tuple[int, ...]]) -> None:
    """name=(tensor, expected shape) for each operand: the kernels index by these shapes and
    would read or write out of bounds on a mismatch (host metadata only, no sync)."""
    for name, (t, shape) in tensors.items():
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def check_layout(
    op: str,
    device: torch.device,
    rows: int,
    num_adapters: int,
    seg_starts: torch.Tensor,
    seg_adapter: torch.Tensor,
    *,
    keep: torch.Tensor | None = None,
    keep_cols: int = 0,
    drop_scale: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
) -> None:
    """Checks of the non-float operands the kernels read (host metadata only, no sync): int32
    segment tensors of matching lengths, a bool (rows, keep_cols) mask with its fp32 (n,) drop
    scales (both or neither), fp32 (n,) scales, all on `device`. Segment VALUES (offsets within
    [0, rows], slots < n) are the caller's contract: `segment_tensors` validates them on the host."""
    segments = seg_adapter.shape[0] if seg_adapter.dim() == 1 else -1
    operands = {
        "seg_starts": (seg_starts, torch.int32, (segments + 1,)),
        "seg_adapter": (seg_adapter, torch.int32, (segments,)),
    }
    if (keep is None) != (drop_scale is None):
        raise ValueError(f"{op}: keep and drop_scale go together (dropout on) or are both None")
    if keep is not None:
        operands["keep"] = (keep, torch.bool, (rows, keep_cols))
        operands["drop_scale"] = (drop_scale, torch.float32, (num_adapters,))
    if scales is not None:
        operands["scales"] = (scales, torch.float32, (num_adapters,))
    for name, (t, dtype, shape) in operands.items():
        if t.dtype != dtype:
            raise TypeError(f"{op}: {name} is {t.dtype}, expected {dtype}")
        if t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device}, expected {device}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {shape}")


def host_segments(seg_starts: torch.Tensor, seg_adapter: torch.Tensor) -> list[tuple[int, int, int]]:
    """[(start, end, adapter slot)] on the host. Reads the tensors: a sync on CUDA (reference only)."""
    starts = seg_starts.tolist()
    return [(starts[i], starts[i + 1], a) for i, a in enumerate(seg_adapter.tolist())]


def adapter_row_ranges(segments: Sequence[tuple[int, int, int]], slot: int) -> list[tuple[int, int]]:
    """The non-empty row ranges of adapter ``slot``, in batch order."""
    return [(s, e) for s, e, a in segments if a == slot and e > s]


def check_segments(
    seg_starts: torch.Tensor, seg_adapter: torch.Tensor, num_rows: int, num_adapters: int
) -> None:
    """Raise ValueError unless the tensors lay out ``num_rows`` rows (reads them: debug and tests only)."""
    if seg_starts.dtype != torch.int32 or seg_adapter.dtype != torch.int32:
        raise ValueError("seg_starts and seg_adapter must be int32")
    if seg_starts.shape != (seg_adapter.shape[0] + 1,):
        raise ValueError(
            f"seg_starts must have S+1={seg_adapter.shape[0] + 1} entries, got {tuple(seg_starts.shape)}"
        )
    starts = seg_starts.tolist()
    if (
        starts[0] != 0
        or starts[-1] != num_rows
        or any(b < a for a, b in zip(starts, starts[1:], strict=False))
    ):
        raise ValueError(f"seg_starts must rise from 0 to {num_rows}, got {starts}")
    bad = [a for a in seg_adapter.tolist() if a < -1 or a >= num_adapters]
    if bad:
        raise ValueError(f"seg_adapter slots must be in [-1, {num_adapters}), got {bad}")
