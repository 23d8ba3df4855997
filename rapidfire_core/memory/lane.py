"""Ordering the pool's copies against compute on one device, without host syncs.

CUDA (`device.type == "cuda"`): copies go on two side streams of the pool, one per direction,

    inbound (H2D: restores, loads)      outbound (D2H: evictions, snapshots)

    stream.wait_stream(compute)        # a copy starts after the kernels queued so far
    event.stream_wait(stream)          # ... and after the copies it depends on (`after`)
    engine.h2d/d2h(ranges, stream=stream)  -> CopyEvent recorded on `stream`
    event.stream_wait(compute)         # (when consumed) compute waits; the host never does

so copies overlap whatever compute is queued after them, and a restore of one run never queues
behind the eviction of another: the GPU's two copy engines move both directions at once. The
pool names each copy's dependencies explicitly (a restore reads a slot after the eviction that
wrote it; an eviction writes a slot after the restores that read it). Memory that a pending
side-stream copy still reads is released with `record_stream`: torch's caching allocator then
reuses it only after the copy completes.

CPU (device == host): the "device" buffers are CPU tensors and the copies run on the copy
engine's threads, which may run two batches at once; a dependency is a host wait before the
copy is enqueued. Consuming an event is a host wait, and memory a pending copy reads is
released only after its event completes (`release_after` returns the event to wait on).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from rapidfire_core._native import require_native


class DeviceLane:
    def __init__(self, device: torch.device, engine) -> None:
        self.device = device
        self.engine = engine
        self.is_cuda = device.type == "cuda"
        if self.is_cuda:
            self.index = device.index if device.index is not None else torch.cuda.current_device()
            self.inbound = torch.cuda.Stream(device=self.index)
            self.outbound = torch.cuda.Stream(device=self.index)
        else:
            self.index = None
            self.inbound = self.outbound = None

    def compute_stream(self):
        """The stream the runs compute on: the scheduler thread's current stream (the default)."""
        return torch.cuda.current_stream(self.index)

    def _enqueue_args(self, stream, after: Iterable) -> dict:
        if not self.is_cuda:
            for event in after:
                event.synchronize()
            return {}
        stream.wait_stream(self.compute_stream())
        for event in after:
            event.stream_wait(stream.cuda_stream)
        return {"device": self.index, "stream": stream.cuda_stream}

    def to_device(self, ranges: Sequence[tuple[int, int, int]], after: Iterable = ()):
        """Arena -> device memory on the inbound stream, after the compute queued so far and the
        CopyEvents `after`. Returns the CopyEvent."""
        return self.engine.h2d(list(ranges), **self._enqueue_args(self.inbound, after))

    def to_host(self, ranges: Sequence[tuple[int, int, int]], after: Iterable = ()):
        """Device memory -> arena on the outbound stream, after the compute queued so far and the
        CopyEvents `after`. Returns the CopyEvent."""
        return self.engine.d2h(list(ranges), **self._enqueue_args(self.outbound, after))

    def inbound_after_outbound(self) -> None:
        """Order every later H2D after every D2H enqueued so far (CUDA; CPU copies of one buffer
        are ordered by host waits already). For the rare copy that overwrites device memory an
        outbound copy may still be reading."""
        if self.is_cuda:
            self.inbound.wait_stream(self.outbound)

    def consume(self, event) -> None:
        """Make compute wait for `event` (CUDA: a stream wait; CPU: a host wait)."""
        if self.is_cuda:
            event.stream_wait(self.compute_stream().cuda_stream)
        else:
            event.synchronize()

    def guard(self, buffer: torch.Tensor, direction: str) -> None:
        """Mark `buffer` as used by the copies going `direction` ("inbound" or "outbound"), so
        freeing it waits for them."""
        if self.is_cuda and buffer.numel():
            buffer.record_stream(self.inbound if direction == "inbound" else self.outbound)

    def release_after(self, buffer: torch.Tensor, event):
        """Free `buffer`'s storage once `event` (an outbound copy reading it) is done.

        CUDA: at once (the allocator defers reuse, see `guard`); returns None. CPU: returns the
        event to wait on before `free_storage(buffer)`."""
        if self.is_cuda:
            self.guard(buffer, "outbound")
            free_storage(buffer)
            return None
        if event.query():  # small batches are copied inline: already done
            free_storage(buffer)
            return None
        return event


def free_storage(buffer: torch.Tensor) -> None:
    """Release `buffer`'s memory but keep every view of it (and their shapes): the FSDP trick.
    Views of a zero-size storage raise if a kernel touches them."""
    buffer.untyped_storage().resize_(0)


def new_buffer(nbytes: int, device: torch.device) -> torch.Tensor:
    """A flat uint8 buffer of `nbytes` for one run's state on `device` (see `allocate_storage`)."""
    buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
    _advise_host_pages(buffer)
    return buffer


def allocate_storage(buffer: torch.Tensor, nbytes: int) -> None:
    """Give `buffer`'s (freed) storage `nbytes` of new memory; its views follow."""
    buffer.untyped_storage().resize_(nbytes)
    _advise_host_pages(buffer)


def _advise_host_pages(buffer: torch.Tensor) -> None:
    # CPU: a fresh buffer of hundreds of MB comes straight from mmap and is faulted in 4 KiB at a
    # time by the copy that fills it (~1-2 GB/s). Huge pages make that copy ~3x faster. CUDA
    # memory comes from torch's caching allocator, already mapped.
    if buffer.device.type == "cpu" and buffer.numel():
        require_native("huge-page advice").advise_huge_pages(buffer.data_ptr(), buffer.numel())
