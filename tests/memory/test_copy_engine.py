"""CopyEngine on the CPU path (host memory on both sides): batches, events, validation."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from rapidfire_core import _native

C = _native.load_native()
pytestmark = pytest.mark.skipif(C is None, reason=f"rapidfire_core._C is not built: {_native.native_error()}")


@pytest.fixture
def arena():
    return C.HostArena(64 << 20, pin="pageable")


@pytest.fixture
def engine(arena):
    return C.CopyEngine(arena, threads=3)


def _bytes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("sizes", [[1000], [7, 0, 300_000], [5 << 20, 3 << 20, 1], [12 << 20]])
def test_round_trip_through_the_arena(arena, engine, sizes):
    host = torch.frombuffer(arena, dtype=torch.uint8)
    sources = [_bytes(n, i) for i, n in enumerate(sizes)]
    slot = arena.allocate(sum(sizes))
    offsets = [slot + sum(sizes[:i]) for i in range(len(sizes))]
    event = engine.d2h([(o, t.data_ptr(), t.numel()) for o, t in zip(offsets, sources, strict=True)])
    event.synchronize()
    assert event.query() and not event.is_cuda and event.handle == 0 and event.device is None
    assert event.nbytes == sum(sizes)
    for o, t in zip(offsets, sources, strict=True):
        assert torch.equal(host[o : o + t.numel()], t)
    targets = [torch.empty_like(t) for t in sources]
    back = engine.h2d([(o, t.data_ptr(), t.numel()) for o, t in zip(offsets, targets, strict=True)])
    back.stream_wait(0)  # host batch: waits on the host
    for src, dst in zip(sources, targets, strict=True):
        assert torch.equal(src, dst)


def test_large_batches_run_on_worker_threads(arena, engine):
    assert engine.num_threads == 3
    n = 48 << 20
    slot = arena.allocate(n)
    src = _bytes(n, 1)
    event = engine.d2h([(slot, src.data_ptr(), n)])
    event.synchronize()
    assert torch.equal(torch.frombuffer(arena, dtype=torch.uint8)[slot : slot + n], src)


def test_a_bad_range_copies_nothing(arena, engine):
    host = torch.frombuffer(arena, dtype=torch.uint8)
    slot = arena.allocate(4096)
    src = _bytes(8192, 2)
    with pytest.raises(IndexError, match="live slot"):
        engine.d2h([(slot, src.data_ptr(), 100), (slot + 4000, src.data_ptr(), 200)])
    assert int(host[slot : slot + 4096].sum()) == 0  # the valid first range was not copied either
    with pytest.raises(ValueError, match="null pointer"):
        engine.h2d([(slot, 0, 10)])
    with pytest.raises(IndexError):
        engine.h2d([(arena.capacity - 8, src.data_ptr(), 8)])  # not allocated


def test_copy_within_for_snapshots(arena, engine):
    host = torch.frombuffer(arena, dtype=torch.uint8)
    n = 3 << 20
    a, b = arena.allocate(n), arena.allocate(n)
    host[a : a + n] = _bytes(n, 3)
    engine.copy_within(a, b, n).synchronize()
    assert torch.equal(host[a : a + n], host[b : b + n])
    with pytest.raises(ValueError, match="overlap"):
        engine.copy_within(a, a + 10, 100)


def test_cuda_target_without_gpu_is_a_clear_error(arena, engine):
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable")
    slot = arena.allocate(64)
    src = torch.zeros(64, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="CUDA|cuda"):
        engine.h2d([(slot, src.data_ptr(), 64)], device=0, stream=0)
    with pytest.raises(ValueError, match="device"):
        engine.h2d([(slot, src.data_ptr(), 64)], device=-1)


def test_gil_is_released_while_copying(arena, engine):
    """Another Python thread keeps running while this one waits on a large copy."""
    n = 48 << 20
    slot = arena.allocate(n)
    src = _bytes(n, 4)
    ticks = 0
    stop = threading.Event()

    def spin():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        time.sleep(0.01)
        before = ticks
        for _ in range(5):
            engine.d2h([(slot, src.data_ptr(), n)]).synchronize()
        assert ticks > before
    finally:
        stop.set()
        thread.join()


def test_the_engine_keeps_the_arena_alive():
    arena = C.HostArena(1 << 20, pin="pageable")
    engine = C.CopyEngine(arena)
    slot = arena.allocate(100)
    del arena
    src = _bytes(100, 5)
    engine.d2h([(slot, src.data_ptr(), 100)]).synchronize()
    assert bytes(engine.arena.view(slot, 100)) == bytes(src.numpy())
