"""`StatePool`: every run's trainable state in one host arena, swapped with batched async copies.

    pool = StatePool("cuda:0", capacity_bytes=8 << 30)
    pool.put(run_id, refs)        # pack: one flat device buffer + one arena slot; tensors re-homed
    pool.evict(run_id)            # one D2H of the device section; device memory released
    pool.prefetch(run_id)         # one H2D on the inbound side stream; returns at once
    pool.acquire(run_id)          # (prefetch if needed) compute waits for the H2D; no host sync
    pool.get(run_id)              # acquire, then {name: tensor}
    pool.snapshot(run_id, "copy") # clone the state inside the arena (warm starts)
    pool.drop(run_id)

A packed run's tensors are views of ONE flat device buffer (layout: `StateLayout`). Evicting
copies that buffer into the run's arena slot and frees its storage with
`untyped_storage().resize_(0)`: every view (parameter `.data`, optimizer moment) keeps its
shape and identity but holds no memory. Restoring gives the storage new memory and copies the
slot back; the views follow the storage, so nothing is re-pointed and a swap costs one copy
plus O(1) Python work, whatever the number of tensors.

Exactness: bytes are copied verbatim in both directions and each view keeps its dtype, shape,
strides and (see `layout`) address alignment, so training after a round trip is bit-identical.

What is not packed stays where it is and is never touched: tensors on another device,
non-contiguous ones, and views of (or storages shared with) other tensors (tied weights, other
flat-parameter schemes). So packing can only move bytes it fully owns.

The pool is used from one thread (the scheduler's); the arena and the copy engine are
thread-safe themselves.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from rapidfire_core._native import require_native
from rapidfire_core.memory.lane import DeviceLane, allocate_storage, free_storage, new_buffer
from rapidfire_core.memory.layout import ALIGNMENT, DEVICE, HOST, StateLayout
from rapidfire_core.memory.state_refs import TensorRef


class PoolError(RuntimeError):
    """A pool operation that does not apply to the entry's current state."""


class PoolUnavailableError(RuntimeError):
    """A CUDA pool was asked for, but the compiled module cannot use the GPU (built without
    CUDA, or its CUDA runtime is newer than the installed driver)."""


@dataclass
class _Entry:
    key: Hashable
    layout: StateLayout
    slot: int  # arena offset of the slot
    refs: list[TensorRef] | None  # None: a detached snapshot (state only in the arena)
    flat: torch.Tensor | None = None  # uint8 (device_bytes,) whose storage is freed when evicted
    resident: bool = False
    ready: object | None = None  # CopyEvent of the H2D compute has not yet waited for
    writes: list = field(default_factory=list)  # CopyEvents that write the slot
    # CopyEvents of H2Ds that read the slot. Kept apart from `ready` (which is consumed when
    # compute is made to wait): the slot may not be freed or written by the host before they end.
    reading: list = field(default_factory=list)
    releasing: object | None = None  # CPU: CopyEvent after which `flat`'s storage is freed
    host: torch.Tensor | None = None  # uint8 view of the slot's host section (its own storage)


@dataclass
class PoolCounters:
    packs: int = 0
    evictions: int = 0
    restores: int = 0
    prefetches: int = 0  # restores issued ahead of acquire()
    bytes_to_host: int = 0
    bytes_to_device: int = 0


class StatePool:
    def __init__(
        self,
        device: torch.device | str,
        capacity_bytes: int,
        *,
        pin: str = "auto",
        alignment: int = ALIGNMENT,
        copy_threads: int = 0,
    ) -> None:
        """device: where resident state lives ("cuda:0", or "cpu": the same code path with host
        memory). capacity_bytes: size of the host arena, allocated once (pinned when `pin` is
        "auto" and a GPU is usable; a CPU pool is always pageable)."""
        native = require_native("the run-state pool (rapidfire_core.memory)")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"StatePool device must be cuda or cpu, got {self.device}")
        index = self.device.index if self.device.type == "cuda" else 0
        if self.device.type == "cuda":
            info = native.build_info()
            if not (info["cuda_compiled"] and info["gpu_usable"]):
                raise PoolUnavailableError(
                    f"a pool on {self.device} needs rapidfire_core._C to use the GPU, and it cannot: "
                    f"{info['gpu_error']}"
                )
        self.arena = native.HostArena(
            capacity_bytes,
            alignment=alignment,
            pin=pin if self.device.type == "cuda" else "pageable",
            device=index,
        )
        if self.device.type == "cuda" and not self.arena.pinned:
            # cudaMemcpyAsync to or from pageable memory returns only when the copy is done: every
            # eviction would wait for the compute queued before it.
            warnings.warn(
                f"the state pool's host arena is not pinned ({self.arena.pin_error}): swaps will block "
                "the scheduler instead of overlapping compute",
                RuntimeWarning,
                stacklevel=2,
            )
        self.engine = native.CopyEngine(self.arena, threads=copy_threads)
        self.lane = DeviceLane(self.device, self.engine)
        self.alignment = alignment
        self.counters = PoolCounters()
        self._entries: dict[Hashable, _Entry] = {}

    # ---- queries ------------------------------------------------------------------------------
    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        return list(self._entries)

    def layout(self, key: Hashable) -> StateLayout:
        return self._entry(key).layout

    def is_resident(self, key: Hashable) -> bool:
        return self._entry(key).resident

    def device_bytes(self, key: Hashable) -> int:
        """Device memory the entry occupies when resident."""
        return self._entry(key).layout.device_bytes

    @property
    def resident_bytes(self) -> int:
        return sum(e.layout.device_bytes for e in self._entries.values() if e.resident)

    def stats(self) -> dict:
        entries = self._entries.values()
        return {
            "device": str(self.device),
            "pinned": self.arena.pinned,
            "entries": len(self._entries),
            "resident": sum(1 for e in entries if e.resident),
            "resident_bytes": self.resident_bytes,
            "arena": self.arena.stats(),
            **vars(self.counters),
        }

    # ---- pack -----------------------------------------------------------------------------------
    def put(self, key: Hashable, refs: Sequence[TensorRef]) -> StateLayout:
        """Pack the tensors of `refs` (resident, as they are now) under `key`.

        Allocates the arena slot (ArenaExhaustedError leaves everything unchanged), copies the
        tensors into one new flat device buffer (device section) and into the slot (host
        section: CPU tensors when the pool is on a GPU), then re-homes every ref to its view.
        Calling it again for a resident key re-packs only when the set of tensors changed
        (e.g. the optimizer created its state) and is free otherwise.
        """
        self._reap()
        old = self._entries.get(key)
        if old is not None:
            if old.refs is None:
                raise PoolError(f"{key!r} is a snapshot; put() needs a new key")
            if not old.resident:
                raise PoolError(f"{key!r} is evicted; acquire() it before re-packing")
            self._consume_ready(old)
        chosen = self._packable(refs, old)
        layout = StateLayout.build(
            ((ref.name, t.dtype, tuple(t.shape), section) for ref, t, section in chosen), self.alignment
        )
        if old is not None and layout.signature == old.layout.signature and len(chosen) == len(old.refs):
            if all(self._owns(old, t) for _, t, _ in chosen):
                return old.layout
        slot = self.arena.allocate(layout.total_bytes)
        try:
            flat = new_buffer(layout.device_bytes, self.device)
            host = None
            if layout.host_bytes:
                host = self.slot_bytes(slot + layout.device_bytes, layout.host_bytes)
            views = []
            for (ref, tensor, _), entry in zip(chosen, layout.entries, strict=True):
                if entry.section == DEVICE:
                    view = layout.view(flat, entry)
                else:
                    view = layout.view(host, entry, base=-layout.device_bytes)
                view.copy_(tensor)
                views.append((ref, view))
        except BaseException:
            self.arena.free(slot)
            raise
        for ref, view in views:
            ref.set(view)
        # Registered before the old slot is freed: if freeing raises, the pool still describes
        # where the tensors live now (the old slot is then lost, never reused while in use).
        self._entries[key] = _Entry(
            key, layout, slot, [ref for ref, _, _ in chosen], flat, resident=True, host=host
        )
        if old is not None:
            self._free_slot(old)
        self.counters.packs += 1
        return layout

    def _section(self, tensor: torch.Tensor) -> str | None:
        if tensor.device == self.device:
            return DEVICE
        if tensor.device.type == "cpu" and self.device.type == "cuda":
            return HOST
        return None

    def _owns(self, entry: _Entry, tensor: torch.Tensor) -> bool:
        ptr = tensor.untyped_storage().data_ptr()
        buffers = [b for b in (entry.flat, entry.host) if b is not None]
        return any(ptr == b.untyped_storage().data_ptr() for b in buffers)

    def _packable(self, refs: Iterable[TensorRef], old: _Entry | None) -> list:
        """(ref, tensor, section) for every ref the pool may move (see the module docstring)."""
        candidates = []
        storages: dict[int, int] = {}
        for ref in refs:
            tensor = ref.get()
            section = self._section(tensor)
            if section is None or not tensor.is_contiguous() or tensor.requires_grad:
                continue
            ours = old is not None and self._owns(old, tensor)
            if not ours:
                storage = tensor.untyped_storage()
                if tensor.storage_offset() != 0 or storage.nbytes() != tensor.nbytes:
                    continue  # a view of something larger: moving it would break the aliasing
                storages[storage.data_ptr()] = storages.get(storage.data_ptr(), 0) + 1
            candidates.append((ref, tensor, section, ours))
        return [
            (ref, tensor, section)
            for ref, tensor, section, ours in candidates
            if ours or storages[tensor.untyped_storage().data_ptr()] == 1
        ]

    # ---- swap -----------------------------------------------------------------------------------
    def evict(self, key: Hashable) -> None:
        """Copy the device section into the slot (one batched D2H) and release the device memory.

        Returns once the copy is enqueued; the views stay valid objects of the same shapes."""
        self._reap()
        e = self._bound(key)
        if not e.resident:
            return
        n = e.layout.device_bytes
        if n:
            # Writes the slot: after every H2D still reading it (e.g. a prefetch never acquired).
            pending_reads = [event for event in e.reading if not event.query()]
            event = self.lane.to_host([(e.slot, e.flat.data_ptr(), n)], after=pending_reads)
            e.reading = []
            e.writes = [event]
            e.releasing = self.lane.release_after(e.flat, event)
            self.counters.bytes_to_host += n
        e.resident = False
        e.ready = None
        self.counters.evictions += 1

    def prefetch(self, key: Hashable) -> None:
        """Start restoring an evicted entry: new device memory, one batched H2D on the inbound
        side stream (never queued behind other runs' evictions).

        Returns at once; `acquire` makes compute wait for it. No-op when resident."""
        self._reap()
        e = self._bound(key)
        if e.resident:
            return
        self._restore(e)
        self.counters.prefetches += 1

    def acquire(self, key: Hashable) -> None:
        """Make the entry usable by the next compute: restore it if evicted, then make the
        compute stream wait for its H2D (no host sync on CUDA; a host wait on CPU)."""
        self._reap()
        e = self._bound(key)
        if not e.resident:
            self._restore(e)
        self._consume_ready(e)

    def get(self, key: Hashable) -> dict[str, torch.Tensor]:
        """{name: tensor} of a resident (acquired) entry, or fresh copies of a snapshot's state."""
        e = self._entry(key)
        if e.refs is None:
            return self.materialize(key)
        self.acquire(key)
        return {ref.name: ref.get() for ref in e.refs}

    def _restore(self, e: _Entry) -> None:
        self._finish_release(e)
        n = e.layout.device_bytes
        if n:
            allocate_storage(e.flat, n)
            # Reads the slot: after the eviction (or arena copy) that wrote it.
            e.ready = self.lane.to_device([(e.slot, e.flat.data_ptr(), n)], after=e.writes)
            e.reading = [event for event in e.reading if not event.query()] + [e.ready]
            self.lane.guard(e.flat, "inbound")
            self.counters.bytes_to_device += n
        e.resident = True
        self.counters.restores += 1

    def _consume_ready(self, e: _Entry) -> None:
        if e.ready is not None:
            self.lane.consume(e.ready)
            e.ready = None

    def _finish_release(self, e: _Entry) -> None:
        if e.releasing is not None:
            e.releasing.synchronize()
            free_storage(e.flat)
            e.releasing = None

    def _reap(self) -> None:
        """CPU: free the storages whose eviction copies have completed (never blocks)."""
        for e in self._entries.values():
            if e.releasing is not None and e.releasing.query():
                free_storage(e.flat)
                e.releasing = None

    # ---- snapshots --------------------------------------------------------------------------------
    def snapshot(self, key: Hashable, new_key: Hashable) -> StateLayout:
        """Clone `key`'s current state into a new slot under `new_key` (a detached entry: the
        state lives only in the arena; `materialize` or `load` use it).

        Resident state: the device section is copied on the outbound stream after the compute
        queued so far, and later compute waits for that copy (a stream wait, no host sync on
        CUDA), so the next optimizer step cannot change the bytes being read; the host section
        (CPU step counters, which the optimizer updates on the host) is copied before this
        returns. Evicted state or a snapshot: one copy inside the arena by the engine's threads,
        after which the source slot may be freed or rewritten."""
        if new_key in self._entries:
            raise PoolError(f"{new_key!r} already exists")
        e = self._entry(key)
        layout = e.layout
        self._consume_ready(e)  # an H2D into `flat` must come before we read it
        slot = self.arena.allocate(layout.total_bytes)
        try:
            writes = []
            if e.resident and e.refs is not None:
                if layout.device_bytes:
                    event = self.lane.to_host([(slot, e.flat.data_ptr(), layout.device_bytes)])
                    self.lane.guard(e.flat, "outbound")  # a side stream reads it: freeing must wait
                    self.lane.consume(event)  # compute (and, on CPU, freeing `flat`) after the read
                    writes.append(event)
                if layout.host_bytes:
                    src = e.slot + layout.device_bytes
                    self.engine.copy_within(src, slot + layout.device_bytes, layout.host_bytes).synchronize()
            else:
                self._wait_writes(e)
                event = self.engine.copy_within(e.slot, slot, layout.total_bytes)
                e.reading.append(event)  # the source slot may not be freed or rewritten before it ends
                writes.append(event)
        except BaseException:
            self.arena.free(slot)
            raise
        self._entries[new_key] = _Entry(new_key, layout, slot, None, writes=writes)
        return layout

    def host_views(self, key: Hashable) -> dict[str, torch.Tensor]:
        """{name: CPU view of the slot} (zero-copy). For an evicted entry or a snapshot this is
        its state; a resident entry's device section in the slot is as of its last eviction.
        Waits for pending writes to the slot."""
        e = self._entry(key)
        self._wait_writes(e)
        slot = self.slot_bytes(e.slot, e.layout.total_bytes)
        return {entry.name: e.layout.view(slot, entry) for entry in e.layout.entries}

    def slot_bytes(self, offset: int, nbytes: int) -> torch.Tensor:
        """uint8 tensor over arena bytes [offset, offset + nbytes) of one live slot, zero-copy.

        Its storage is that range alone (not the whole arena), so `torch.save` of a tensor that
        views it (e.g. an optimizer's CPU `step`, or a `host_views` entry) writes only the
        slot's bytes; the tensor keeps the arena alive."""
        return torch.frombuffer(self.arena.view(offset, nbytes), dtype=torch.uint8)

    def materialize(self, key: Hashable, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Fresh tensors (own memory, on `device`, default the pool's) with the state in the slot."""
        target = torch.device(device) if device is not None else self.device
        return {name: view.to(target, copy=True) for name, view in self.host_views(key).items()}

    def load(self, src_key: Hashable, dst_key: Hashable) -> None:
        """Overwrite `dst_key`'s state with `src_key`'s (same layout signature), e.g. a warm start
        from a snapshot. A resident destination gets one H2D into its flat buffer, which compute
        waits for (a stream wait on CUDA); an evicted one a copy inside the arena."""
        src, dst = self._entry(src_key), self._bound(dst_key)
        if src.layout.signature != dst.layout.signature:
            raise PoolError(f"cannot load {src_key!r} into {dst_key!r}: their state layouts differ")
        if src.resident and src.refs is not None:
            raise PoolError(f"{src_key!r} is resident: snapshot() it first")
        self._wait_writes(src)
        src.reading = [event for event in src.reading if not event.query()]  # warm starts repeat
        layout = dst.layout
        if dst.resident:
            self._consume_ready(dst)
            if layout.device_bytes:
                self.lane.inbound_after_outbound()  # a snapshot's D2H may still read dst.flat
                dst.ready = self.lane.to_device([(src.slot, dst.flat.data_ptr(), layout.device_bytes)])
                src.reading.append(dst.ready)
                self.lane.guard(dst.flat, "inbound")
            if layout.host_bytes:
                self.engine.copy_within(
                    src.slot + layout.device_bytes, dst.slot + layout.device_bytes, layout.host_bytes
                ).synchronize()  # host entries are live tensors: visible before this returns
            self._consume_ready(dst)  # compute waits for the H2D (no host sync on CUDA)
        else:
            self._finish_release(dst)
            self._wait_writes(dst)
            self._wait_reads(dst)  # the host is about to overwrite dst's slot
            event = self.engine.copy_within(src.slot, dst.slot, layout.total_bytes)
            src.reading.append(event)
            dst.writes = [event]

    # ---- teardown ---------------------------------------------------------------------------------
    def drop(self, key: Hashable, keep: Callable[[TensorRef], bool] | None = None) -> None:
        """Forget `key` and free its slot.

        keep(ref) -> True: that tensor stays valid with its current value; the others are
        pointed at empty tensors so their memory can go. Default: keep everything. Kept host
        entries (views of the slot) and, when some device entries are let go, kept device
        entries get memory of their own (a copy), so the flat buffer is freed; when every
        device entry is kept they stay views of it (no copy). An evicted entry is restored
        first if anything is kept."""
        e = self._entry(key)
        keep = keep or (lambda ref: True)
        if e.refs is not None:
            kept = {id(ref) for ref in e.refs if keep(ref)}
            if kept:
                self.acquire(key)
            sections = {entry.name: entry.section for entry in e.layout.entries}
            keep_flat = all(id(ref) in kept for ref in e.refs if sections.get(ref.name) == DEVICE)
            for ref in e.refs:
                tensor = ref.get()
                if id(ref) not in kept:
                    ref.set(torch.empty(0, dtype=tensor.dtype, device=tensor.device))
                elif not (keep_flat and sections.get(ref.name) == DEVICE):
                    ref.set(tensor.clone())
        self._free_slot(e)
        del self._entries[key]

    def synchronize(self) -> None:
        """Wait for every pending copy and finish deferred releases (host sync: not a hot path)."""
        for e in self._entries.values():
            self._finish_release(e)
            self._wait_writes(e)
            self._wait_reads(e)
            if e.ready is not None:
                e.ready.synchronize()

    def close(self) -> None:
        """Wait for pending copies and forget every entry (tensors are left as they are)."""
        self.synchronize()
        self._entries.clear()

    # ---- internals ---------------------------------------------------------------------------------
    def _entry(self, key: Hashable) -> _Entry:
        try:
            return self._entries[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in the pool") from None

    def _bound(self, key: Hashable) -> _Entry:
        e = self._entry(key)
        if e.refs is None:
            raise PoolError(f"{key!r} is a snapshot (no live tensors); use load() or materialize()")
        return e

    def _wait_writes(self, e: _Entry) -> None:
        for event in e.writes:
            event.synchronize()
        e.writes = []

    def _free_slot(self, e: _Entry) -> None:
        """Free the slot once nothing reads or writes it (host sync: only on drop/re-pack)."""
        self._finish_release(e)
        self._wait_writes(e)
        self._wait_reads(e)
        self.arena.free(e.slot)

    def _wait_reads(self, e: _Entry) -> None:
        for event in e.reading:
            event.synchronize()
        e.reading = []
