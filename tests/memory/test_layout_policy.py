"""StateLayout packing, eviction order, byte sizes: pure Python, no native module."""

from __future__ import annotations

import pytest
import torch

from rapidfire_core.memory.layout import DEVICE, HOST, StateLayout, align_up
from rapidfire_core.memory.policy import furthest_first, next_use, plan_evictions
from rapidfire_core.memory.sizes import format_bytes, parse_bytes


def test_layout_packs_device_section_first_with_aligned_offsets():
    specs = [
        ("a", torch.float32, (3, 5), DEVICE),  # 60 bytes
        ("step", torch.float32, (), HOST),
        ("b", torch.bfloat16, (1000,), DEVICE),  # 2000 bytes
        ("empty", torch.float32, (0, 4), DEVICE),
        ("c", torch.int64, (2,), HOST),
    ]
    layout = StateLayout.build(specs)
    by_name = {e.name: e for e in layout.entries}
    assert [e.name for e in layout.entries] == ["a", "b", "empty", "step", "c"]
    assert by_name["a"].offset == 0 and by_name["a"].nbytes == 60
    assert by_name["b"].offset == 512 and by_name["b"].nbytes == 2000
    assert by_name["empty"].offset == 2560 and by_name["empty"].nbytes == 0
    assert layout.device_bytes == 2560
    assert by_name["step"].offset == 2560 and by_name["c"].offset == 3072
    assert layout.host_bytes == 1024 and layout.total_bytes == 3584
    assert all(e.offset % 512 == 0 for e in layout.entries)
    assert layout.manifest()[1] == {
        "name": "b",
        "dtype": "bfloat16",
        "shape": [1000],
        "section": "device",
        "offset": 512,
        "nbytes": 2000,
    }


def test_layout_views_read_and_write_the_buffer():
    layout = StateLayout.build([("w", torch.float32, (2, 3), DEVICE), ("m", torch.float16, (4,), DEVICE)])
    flat = torch.zeros(layout.device_bytes, dtype=torch.uint8)
    w = layout.view(flat, layout.entries[0])
    m = layout.view(flat, layout.entries[1])
    w.copy_(torch.arange(6, dtype=torch.float32).view(2, 3))
    m.fill_(1.5)
    assert w.shape == (2, 3) and w.dtype == torch.float32 and w.is_contiguous()
    assert w.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    assert torch.equal(flat[:24].view(torch.float32), torch.arange(6, dtype=torch.float32))
    assert torch.equal(flat[512:520].view(torch.float16), torch.full((4,), 1.5, dtype=torch.float16))
    # a second buffer with the same layout holds the same tensors at the same offsets
    other = flat.clone()
    assert torch.equal(layout.view(other, layout.entries[0]), w)


def test_layout_signature_and_errors():
    a = StateLayout.build([("x", torch.float32, (4,), DEVICE)])
    assert a.signature == StateLayout.build([("x", torch.float32, [4], DEVICE)]).signature
    assert a.signature != StateLayout.build([("x", torch.float32, (5,), DEVICE)]).signature
    with pytest.raises(ValueError, match="unique"):
        StateLayout.build([("x", torch.float32, (1,), DEVICE), ("x", torch.float32, (1,), HOST)])
    with pytest.raises(ValueError, match="section"):
        StateLayout.build([("x", torch.float32, (1,), "gpu")])
    assert align_up(0) == 0 and align_up(1) == 512 and align_up(512) == 512


def test_furthest_first_and_next_use():
    upcoming = ["b", "c", "a", "b"]
    assert next_use(upcoming) == {"b": 0, "c": 1, "a": 2}
    assert furthest_first(["a", "b", "c", "z"], upcoming) == ["z", "a", "c", "b"]


def test_plan_evictions():
    resident = {"a": 10, "b": 10, "c": 10}
    order = ["b", "c", "a"]  # a is needed last
    assert plan_evictions(resident, 30, order) == []
    assert plan_evictions(resident, 25, order) == ["a"]
    assert plan_evictions(resident, 10, order) == ["a", "c"]
    assert plan_evictions(resident, 0, order) == ["a", "c", "b"]
    assert plan_evictions(resident, 5, order, evictable=lambda k: k != "b") is None
    assert plan_evictions({"a": 10, "x": 1}, 10, ["a"]) == ["x"]  # never needed again goes first


def test_round_robin_with_room_for_k_keeps_the_next_k():
    """Belady on a cycle: evicting the run that just ran keeps the next ones resident."""
    resident = {"r0": 1, "r1": 1, "r2": 1}  # of r0..r3, taking turns in that order
    upcoming = ["r1", "r2", "r3", "r0"]  # r0 just ran
    assert plan_evictions(resident, 2, upcoming) == ["r0"]  # LRU would evict r1, needed next


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        (0, 0),
        (1, 1),
        (2.0, 2),
        ("0", 0),
        ("512", 512),
        ("1KiB", 1024),
        ("1.5 GiB", 1610612736),
        ("2GB", 2_000_000_000),
        ("64k", 65536),
        ("3 MiB", 3 << 20),
        ("1b", 1),
    ],
)
def test_parse_bytes(value, expected):
    assert parse_bytes(value) == expected


@pytest.mark.parametrize("value", [-1, 1.5, "lots", "1 XB", "", True, [1]])
def test_parse_bytes_rejects_and_names_the_field(value):
    with pytest.raises(ValueError, match="gpu_state_budget"):
        parse_bytes(value, "gpu_state_budget")


def test_format_bytes():
    assert format_bytes(100) == "100 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(3 << 30) == "3.00 GiB"
