"""HostArena: slots, coalescing, exhaustion, thread safety, zero-copy views."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from rapidfire_core import _native

C = _native.load_native()
pytestmark = pytest.mark.skipif(C is None, reason=f"rapidfire_core._C is not built: {_native.native_error()}")

ALIGN = 512
CAPACITY = 64 * ALIGN  # 32 KiB: small enough that random sequences hit exhaustion


def _round(n: int) -> int:
    return max(1, -(-n // ALIGN)) * ALIGN


def _check_consistent(arena, live: dict[int, int]) -> None:
    """Slots and free blocks tile the arena exactly, free blocks never touch, sizes add up."""
    slots = arena.slots()
    free = arena.free_blocks()
    assert dict(slots) == live
    pieces = sorted([(o, s, "slot") for o, s in slots] + [(o, s, "free") for o, s in free])
    at = 0
    for offset, size, _kind in pieces:
        assert offset == at, f"gap or overlap at {offset} (expected {at})"
        assert size > 0 and offset % ALIGN == 0 and size % ALIGN == 0
        at += size
    assert at == arena.capacity
    for (o1, s1), (o2, _) in zip(free, free[1:], strict=False):
        assert o1 + s1 < o2, "two adjacent free blocks were not merged"
    stats = arena.stats()
    assert stats["used"] == sum(live.values())
    assert stats["free"] == arena.capacity - stats["used"]
    assert stats["largest_free_block"] == max((s for _, s in free), default=0)
    assert stats["num_slots"] == len(live) and stats["num_free_blocks"] == len(free)


class ArenaMachine(RuleBasedStateMachine):
    """Random allocate/free sequences against a model of the live slots."""

    slots = Bundle("slots")

    def __init__(self) -> None:
        super().__init__()
        self.arena = C.HostArena(CAPACITY, alignment=ALIGN, pin="pageable")
        self.live: dict[int, int] = {}

    @rule(target=slots, nbytes=st.integers(0, CAPACITY // 3))
    def allocate(self, nbytes):
        free_before = self.arena.stats()["largest_free_block"]
        try:
            offset = self.arena.allocate(nbytes)
        except C.ArenaExhaustedError as exc:
            assert _round(nbytes) > free_before  # fails only when no block is large enough
            assert str(nbytes) in str(exc)
            return None
        assert offset not in self.live
        assert self.arena.slot_size(offset) == _round(nbytes)
        self.live[offset] = _round(nbytes)
        return offset

    @rule(offset=consumes(slots))
    def free(self, offset):
        if offset is None:
            return
        self.arena.free(offset)
        del self.live[offset]

    @rule(offset=slots)
    def double_free_is_an_error(self, offset):
        if offset is None or offset in self.live:
            return
        with pytest.raises(ValueError, match="not a live slot"):
            self.arena.free(offset)

    @invariant()
    def consistent(self):
        _check_consistent(self.arena, self.live)

    def teardown(self):
        for offset in list(self.live):
            self.arena.free(offset)
        # no leak: everything merges back into one block
        assert self.arena.free_blocks() == [(0, CAPACITY)]
        assert self.arena.stats()["used"] == 0


TestArenaMachine = ArenaMachine.TestCase
TestArenaMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


@given(st.lists(st.integers(1, 4 * ALIGN), min_size=1, max_size=30), st.randoms())
@settings(max_examples=50, deadline=None)
def test_free_in_any_order_coalesces_to_one_block(sizes, rng):
    arena = C.HostArena(len(sizes) * 4 * ALIGN, alignment=ALIGN, pin="pageable")
    offsets = [arena.allocate(n) for n in sizes]
    rng.shuffle(offsets)
    for offset in offsets:
        arena.free(offset)
    assert arena.free_blocks() == [(0, arena.capacity)]


def test_best_fit_reuses_the_smallest_hole():
    arena = C.HostArena(16 * ALIGN, alignment=ALIGN, pin="pageable")
    a, b, c, d = (arena.allocate(n * ALIGN) for n in (4, 1, 2, 1))
    arena.free(a)  # hole of 4 at 0
    arena.free(c)  # hole of 2 at 5
    assert arena.allocate(2 * ALIGN) == c
    assert arena.allocate(3 * ALIGN) == a
    del b, d


def test_exhaustion_names_sizes_and_changes_nothing():
    arena = C.HostArena(8 * ALIGN, alignment=ALIGN, pin="pageable")
    first = arena.allocate(3 * ALIGN)
    arena.allocate(2 * ALIGN)
    arena.free(first)  # free: 3 blocks at 0 + 3 blocks at the end, largest 3 blocks
    before = (arena.slots(), arena.free_blocks())
    with pytest.raises(C.ArenaExhaustedError) as info:
        arena.allocate(4 * ALIGN)
    message = str(info.value)
    assert "requested 2048 bytes" in message
    assert "largest free block 1536 bytes" in message
    assert f"capacity {8 * ALIGN} bytes" in message
    assert isinstance(info.value, MemoryError)
    assert (arena.slots(), arena.free_blocks()) == before
    with pytest.raises(C.ArenaExhaustedError, match="capacity"):
        arena.allocate(1 << 40)


def test_bad_arguments():
    with pytest.raises(ValueError, match="alignment"):
        C.HostArena(1 << 20, alignment=100)
    with pytest.raises(ValueError, match="capacity"):
        C.HostArena(0)
    with pytest.raises(ValueError, match="pin"):
        C.HostArena(1 << 20, pin="sometimes")
    arena = C.HostArena(1 << 20, pin="pageable")
    with pytest.raises(ValueError, match="not a live slot"):
        arena.free(12345)
    with pytest.raises(IndexError):
        arena.check_range(0, 1)  # no slot there


def test_capacity_is_whole_pages_and_zero_filled():
    arena = C.HostArena(1000, pin="pageable")
    assert arena.capacity == 4096 and len(arena) == 4096
    view = torch.frombuffer(arena, dtype=torch.uint8)
    assert view.numel() == arena.capacity and view.data_ptr() == arena.address
    assert int(view.sum()) == 0


def test_views_are_zero_copy_and_keep_the_arena_alive():
    arena = C.HostArena(1 << 16, pin="pageable")
    offset = arena.allocate(1000)
    mv = arena.view(offset, 1000)
    assert isinstance(mv, memoryview) and not mv.readonly and mv.nbytes == 1000
    mv[:4] = b"\x01\x02\x03\x04"
    whole = torch.frombuffer(arena, dtype=torch.uint8)
    assert whole[offset : offset + 4].tolist() == [1, 2, 3, 4]
    whole[offset + 4] = 9
    assert mv[4] == 9
    with pytest.raises(IndexError):
        arena.view(offset, 1 << 15)  # beyond the slot
    del arena
    mv[5] = 7  # still valid: the view holds the arena
    assert whole[offset + 5] == 7


def test_pin_auto_without_gpu_is_pageable_with_reason():
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable: auto pins")
    arena = C.HostArena(1 << 20)  # pin="auto"
    assert arena.pinned is False
    assert arena.pin_error  # says why: no driver, no device, or a CPU-only build
    with pytest.raises(RuntimeError, match="pinned"):
        C.HostArena(1 << 20, pin="pinned")


def test_concurrent_allocate_free_from_threads():
    arena = C.HostArena(256 * ALIGN, alignment=ALIGN, pin="pageable")
    view = torch.frombuffer(arena, dtype=torch.uint8)
    errors = []

    def worker(seed: int) -> None:
        import random

        rng = random.Random(seed)
        mine: list[tuple[int, int]] = []
        try:
            for _ in range(400):
                if mine and rng.random() < 0.45:
                    offset, size = mine.pop(rng.randrange(len(mine)))
                    # nobody else wrote into my slot
                    assert bool((view[offset : offset + size] == seed).all())
                    arena.free(offset)
                else:
                    size = rng.randint(1, 6) * ALIGN
                    try:
                        offset = arena.allocate(size)
                    except C.ArenaExhaustedError:
                        continue
                    view[offset : offset + size] = seed
                    mine.append((offset, size))
            for offset, _ in mine:
                arena.free(offset)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert arena.free_blocks() == [(0, arena.capacity)]
    assert arena.stats()["peak_used"] > 0


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "unknown"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "unknown"


def test_huge_page_advice_covers_whole_pages_inside_and_keeps_contents():
    huge = 2 << 20
    buffer = torch.arange(5 * huge, dtype=torch.uint8)  # values wrap at 256: a pattern to check
    expected = buffer.clone()
    assert C.advise_huge_pages(buffer.data_ptr(), 100) == 0  # no whole huge page fits
    assert C.advise_huge_pages(buffer.data_ptr() + 1, huge) == 0  # straddles a boundary
    advised = C.advise_huge_pages(buffer.data_ptr(), buffer.numel())
    if _thp_mode() in ("always", "madvise"):
        # [ptr, ptr + 5 MiB*2) holds 4 or 5 aligned 2 MiB pages; never bytes outside it.
        assert advised % huge == 0 and 4 * huge <= advised <= 5 * huge
    else:
        assert advised % huge == 0 and advised <= 5 * huge
    assert torch.equal(buffer, expected)  # advice only: the bytes are untouched
