"""The segment layout of the current step, set by the trainer, read by every MultiLoraLinear.

A fused cohort step concatenates the runs' micro-batches along the row axis (rows =
flattened tokens, ``batch * seq``). The trainer describes that concatenation once per
step as segments ``[(adapter name or None, rows), ...]`` and runs forward (and backward,
if gradient checkpointing recomputes) inside ``with lora_batch(batch):``::

    batch = LoraBatch([("run-a", 2 * 512), ("run-b", 2 * 512), (None, 512)], device="cuda")
    with lora_batch(batch):
        loss = model(input_ids=ids).loss      # ids: the 5 sequences of 512 tokens, concatenated
    loss.backward()

Every piece of device metadata is built here, on the host, from Python ints, and copied
once (pinned, non-blocking): the layers never call ``.item()`` or ``.tolist()``. A layer
asks for the layout of its own adapter set (adapters differ in their target modules), and
gets it from a cache: the first layer of each distinct set pays one small H2D copy, the
rest reuse it.

Outside any ``lora_batch`` block a MultiLoraLinear is its frozen base layer (like a PEFT
model with its adapters disabled).

Gradient checkpointing re-runs layer forwards during backward: keep the batch active
around ``backward()`` too, and leave ``generator=None`` so that checkpointing's RNG
restore reproduces the same dropout masks (it restores the global generators only).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..ops.segments import segment_tensors

if TYPE_CHECKING:
    from .run_streams import RunStream

# The active batches, innermost last, per thread: a cohort step's batch is seen by the thread
# that runs the step, never by a run's own thread evaluating meanwhile. (A thread-local rather
# than a ContextVar: torch.compile traces attribute reads of a threading.local, not ContextVar.get.)
_ACTIVE = threading.local()


@dataclass(frozen=True)
class SegmentLayout:
    """What the ops need for one adapter set (a layer's adapters, in its slot order) this step."""

    seg_starts: torch.Tensor  # (S+1,) int32 row offsets, shared by every layout of the batch
    seg_slot: torch.Tensor  # (S,) int32 slot in `active`, -1 where none of the set's adapters applies
    active: tuple[str, ...]  # the set's adapters that own rows in this batch, in the set's order
    num_rows: int
    segments: tuple[tuple[int, int, int], ...]  # host copy: (start, end, slot) for the torch path


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)  # no host wait on the GPU stream


class LoraBatch:
    """Segments of one fused step: ``[(adapter name or None, size), ...]`` in row order.

    A layer sees its input as rows: (batch, seq, features) flattens to batch * seq rows, one
    per token. By default a segment's size counts those rows, so two sequences of 64 tokens
    are ``("a", 2 * 64)``. ``per_sequence=True``: sizes count sequences instead, ``("a", 2)``,
    and each layer call scales them by its own tokens per sequence (its rows / the total
    sequences), which is what generation needs (the prompt, then one token per step); every
    sequence of one call has the same length, so pad different lengths to one
    (`lora.fused.pack_adapter_batches` does). ``None``: rows that no adapter touches.

    ``adapter_sets``: the adapter-name tuples of the model's layers (``lora_adapter_sets(model)``)
    to build every layout up front, e.g. before ``torch.compile`` traces the forward.
    ``generator``: the RNG for dropout masks (default: the global one of the device).
    """

    def __init__(
        self,
        segments: Sequence[tuple[str | None, int]],
        device: torch.device | str = "cpu",
        *,
        adapter_sets: Iterable[Sequence[str]] = (),
        generator: torch.Generator | None = None,
        per_sequence: bool = False,
        streams: Sequence[RunStream | None] | None = None,
    ) -> None:
        if not segments:
            raise ValueError("LoraBatch needs at least one segment: [(adapter name or None, rows), ...]")
        for name, rows in segments:
            if name is not None and not isinstance(name, str):
                raise TypeError(f"segment adapter must be a str or None, got {name!r}")
            if int(rows) < 0:
                raise ValueError(f"segment rows must be >= 0, got {rows} for adapter {name!r}")
        self.segment_adapters: tuple[str | None, ...] = tuple(name for name, _ in segments)
        self.segment_rows: tuple[int, ...] = tuple(int(rows) for _, rows in segments)
        self.num_rows = sum(self.segment_rows)
        self.device = torch.device(device)
        self.generator = generator
        # Segments count sequences, not rows: each call's rows are its sequences x its tokens per
        # sequence (generation: the prompt, then one token per step), see `at_rows`.
        self.per_sequence = per_sequence
        # One per segment: the run whose RNG stream draws that segment's dropout masks
        # (`lora.run_streams`); None: one mask for the whole batch from ``generator``.
        self.streams = tuple(streams) if streams is not None else None
        if self.streams is not None and len(self.streams) != len(segments):
            raise ValueError(f"{len(self.streams)} streams for {len(segments)} segments")
        self._scaled: dict[int, LoraBatch] = {}
        self.seg_starts, _ = segment_tensors(self.segment_rows, [-1] * len(self.segment_rows), self.device)
        self._layouts: dict[tuple[str, ...], SegmentLayout] = {}
        self._floats: dict[tuple[tuple[float, ...], torch.dtype], torch.Tensor] = {}
        self._row_values: dict[tuple[tuple[str, ...], tuple[float, ...]], torch.Tensor] = {}
        adapter_sets = [tuple(names) for names in adapter_sets]
        if adapter_sets:
            # A name no layer knows would silently train nothing: say so before the step runs.
            known = {n for names in adapter_sets for n in names}
            unknown = sorted({n for n in self.segment_adapters if n is not None and n not in known})
            if unknown:
                raise ValueError(f"LoraBatch segments name adapters the model does not have: {unknown}")
        for names in adapter_sets:
            self.layout_for(names)

    def at_rows(self, num_rows: int) -> LoraBatch:
        """The batch for a layer call of ``num_rows`` rows: itself, or for a ``per_sequence`` batch,
        its segments times the call's tokens per sequence (cached per token count)."""
        if not self.per_sequence:
            return self
        tokens, rest = divmod(num_rows, self.num_rows) if self.num_rows else (0, num_rows)
        if rest or tokens == 0:
            raise ValueError(
                f"a call of {num_rows} rows does not split into the {self.num_rows} sequences of {self!r}"
            )
        scaled = self._scaled.get(tokens)
        if scaled is None:
            segments = [
                (n, rows * tokens) for n, rows in zip(self.segment_adapters, self.segment_rows, strict=True)
            ]
            scaled = LoraBatch(segments, self.device, generator=self.generator, streams=self.streams)
            self._scaled[tokens] = scaled
        return scaled

    @property
    def adapters(self) -> tuple[str, ...]:
        """Adapter names that own at least one row in this batch, in first-appearance order."""
        pairs = zip(self.segment_adapters, self.segment_rows, strict=True)
        return tuple(dict.fromkeys(n for n, rows in pairs if n is not None and rows > 0))

    def layout_for(self, names: tuple[str, ...]) -> SegmentLayout:
        """The layout for a layer whose adapters are ``names`` (cached per distinct tuple)."""
        layout = self._layouts.get(names)
        if layout is None:
            present = set(self.adapters)
            active = tuple(n for n in names if n in present)
            slot_of = {n: i for i, n in enumerate(active)}
            slots = [slot_of.get(n, -1) if n is not None else -1 for n in self.segment_adapters]
            seg_slot = _to_device(torch.tensor(slots, dtype=torch.int32), self.device)
            bounds = [0]
            for rows in self.segment_rows:
                bounds.append(bounds[-1] + rows)
            host = tuple((bounds[i], bounds[i + 1], slot) for i, slot in enumerate(slots))
            layout = SegmentLayout(self.seg_starts, seg_slot, active, self.num_rows, host)
            self._layouts[names] = layout
        return layout

    def floats(self, values: tuple[float, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A cached (len(values),) device tensor: per-adapter scales of a layer (fp32; fp64 for fp64 math)."""
        t = self._floats.get((values, dtype))
        if t is None:
            t = _to_device(torch.tensor(values, dtype=dtype), self.device)
            self._floats[(values, dtype)] = t
        return t

    def row_values(self, layout: SegmentLayout, per_active: tuple[float, ...]) -> torch.Tensor:
        """(num_rows,) fp32: ``per_active[slot]`` on each row of an active adapter, 0 elsewhere."""
        key = (layout.active, per_active)
        t = self._row_values.get(key)
        if t is None:
            value_of = dict(zip(layout.active, per_active, strict=True))
            pieces = [
                torch.full((rows,), value_of.get(name, 0.0) if name is not None else 0.0, dtype=torch.float32)
                for name, rows in zip(self.segment_adapters, self.segment_rows, strict=True)
            ]
            t = _to_device(torch.cat(pieces), self.device)
            self._row_values[key] = t
        return t

    def __enter__(self) -> LoraBatch:
        _ACTIVE.stack = (*_active(), self)
        return self

    def __exit__(self, *exc) -> None:
        stack = list(_active())
        stack.reverse()
        stack.remove(self)  # the innermost entry of this batch
        stack.reverse()
        _ACTIVE.stack = tuple(stack)

    def __repr__(self) -> str:
        segs = ", ".join(
            f"({n!r}, {r})" for n, r in zip(self.segment_adapters, self.segment_rows, strict=True)
        )
        return f"LoraBatch([{segs}], device={self.device})"


# The batch of a backward in progress, for the layer forwards that gradient checkpointing re-runs
# on autograd's device threads (which do not see the calling thread's batches).
_BACKWARD: LoraBatch | None = None


def _active() -> tuple[LoraBatch, ...]:
    return getattr(_ACTIVE, "stack", ())


def in_backward() -> bool:
    """True inside a `backward_batch` block: a layer forward now is gradient checkpointing's
    recompute of one the forward ran."""
    return _BACKWARD is not None


def current_lora_batch() -> LoraBatch | None:
    """The innermost LoraBatch active in this thread, else the one of a `backward_batch` block in
    progress, else None (layers then act as their base layer)."""
    active = _active()
    return active[-1] if active else _BACKWARD


@contextlib.contextmanager
def backward_batch(batch: LoraBatch) -> Iterator[LoraBatch]:
    """Run a backward of a ``batch`` forward inside the block: layer forwards re-run by gradient
    checkpointing see ``batch`` on any thread (on CUDA, autograd runs them on its own threads).
    One at a time per process: the fused cohort step that uses it is exclusive."""
    global _BACKWARD
    if _BACKWARD is not None:
        raise RuntimeError("a backward_batch block is already in progress")
    _BACKWARD = batch
    try:
        with lora_batch(batch):
            yield batch
    finally:
        _BACKWARD = None


@contextlib.contextmanager
def lora_batch(batch: LoraBatch) -> Iterator[LoraBatch]:
    """Make ``batch`` the segment layout that every MultiLoraLinear uses inside the block."""
    with batch:
        yield batch


def single_adapter_batch(name: str, num_rows: int, device: torch.device | str = "cpu") -> LoraBatch:
    """Every row to adapter ``name``: how one run evaluates or generates on its own."""
    return LoraBatch([(name, num_rows)], device)
