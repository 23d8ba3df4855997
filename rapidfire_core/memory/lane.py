"""Ordering the pool's copies against compute on one device, without host syncs.

CUDA (`device.type == "cuda"`): every copy is enqueued on one side stream of the pool,

    side.wait_stream(compute)      # the copy starts after the kernels queued so far
    engine.h2d/d2h(ranges, stream=side)  -> CopyEvent recorded on `side`
    event.stream_wait(compute)     # (when consumed) compute waits; the host never does

so copies overlap whatever compute is queued after them, and all of the pool's copies are
ordered among themselves (a restore reads a slot after the eviction that wrote it). Memory
that a pending side-stream copy still reads is released with `record_stream(side)`: torch's
caching allocator then reuses it only after the copy completes.

CPU (device == host): the "device" buffers are CPU tensors and the copies run on the copy
engine's threads. Consuming an event is a host wait, and memory a pending copy reads is
released only after its event completes (`release_after` returns the event to wait on).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class DeviceLane:
    def __init__(self, device: torch.device, engine) -> None:
        self.device = device
        self.engine = engine
        self.is_cuda = device.type == "cuda"
        if self.is_cuda:
            self.index = device.index if device.index is not None else torch.cuda.current_device()
            self.side = torch.cuda.Stream(device=self.index)
        else:
            self.index = None
            self.side = None

    def compute_stream(self):
        """The stream the runs compute on: the scheduler thread's current stream (the default)."""
        return torch.cuda.current_stream(self.index)

    def _enqueue_args(self) -> dict:
        if not self.is_cuda:
            return {}
        self.side.wait_stream(self.compute_stream())
        return {"device": self.index, "stream": self.side.cuda_stream}

    def to_device(self, ranges: Sequence[tuple[int, int, int]]):
        """Arena -> device memory, after the compute queued so far. Returns the CopyEvent."""
        return self.engine.h2d(list(ranges), **self._enqueue_args())

    def to_host(self, ranges: Sequence[tuple[int, int, int]]):
        """Device memory -> arena, after the compute queued so far. Returns the CopyEvent."""
        return self.engine.d2h(list(ranges), **self._enqueue_args())

    def consume(self, event) -> None:
        """Make compute wait for `event` (CUDA: a stream wait; CPU: a host wait)."""
        if self.is_cuda:
            event.stream_wait(self.compute_stream().cuda_stream)
        else:
            event.synchronize()

    def guard(self, buffer: torch.Tensor) -> None:
        """Mark `buffer` as used by the side stream, so freeing it waits for pending copies."""
        if self.is_cuda and buffer.numel():
            buffer.record_stream(self.side)

    def release_after(self, buffer: torch.Tensor, event):
        """Free `buffer`'s storage once `event` (a copy reading it) is done.

        CUDA: at once (the allocator defers reuse, see `guard`); returns None. CPU: returns the
        event to wait on before `free_storage(buffer)`."""
        if self.is_cuda:
            self.guard(buffer)
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


def allocate_storage(buffer: torch.Tensor, nbytes: int) -> None:
    """Give `buffer`'s (freed) storage `nbytes` of new memory; its views follow."""
    buffer.untyped_storage().resize_(nbytes)
