"""Chunk plan and samplers: every run sees the same chunks, in the same order, each epoch reshuffled."""

import pytest

from rapidfire_core.scheduler.chunks import ChunkedSampler, ChunkPlan, GroupedRepeatSampler


def test_chunks_partition_every_row_once_per_epoch():
    plan = ChunkPlan(num_rows=103, num_chunks=4, seed=42)
    for epoch in range(3):
        rows = [r for k in range(4) for r in plan.chunk_rows(epoch, k)]
        assert sorted(rows) == list(range(103))
    sizes = [plan.bounds[k + 1] - plan.bounds[k] for k in range(4)]
    assert sizes == [26, 26, 26, 25]


def test_order_is_deterministic_in_seed_and_reshuffled_each_epoch():
    a, b = ChunkPlan(64, 4, seed=7), ChunkPlan(64, 4, seed=7)
    assert a.order(0) == b.order(0)
    assert a.order(1) == b.order(1)
    assert a.order(0) != a.order(1)
    assert a.order(0) != ChunkPlan(64, 4, seed=8).order(0)
    assert a.order(0) != list(range(64))


def test_sampler_follows_plan_and_does_not_touch_global_rng():
    import torch

    plan = ChunkPlan(20, 5, seed=1)
    sampler = ChunkedSampler(plan)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    sampler.set_epoch(1)
    assert list(sampler) == plan.order(1)
    assert torch.equal(before, torch.get_rng_state())
    assert sampler.item_chunk_ends(1) == [4, 8, 12, 16, 20]


def test_grouped_repeat_sampler_structure_and_chunk_ends():
    plan = ChunkPlan(12, 2, seed=3)
    sampler = GroupedRepeatSampler(plan, mini_repeat_count=2, prompts_per_batch=3, repeat_count=2)
    items = list(sampler)
    order = plan.order(0)
    first_group = order[:3]
    # each group of 3 prompts appears repeat_count=2 times, each prompt num_generations=2 times
    assert items[:12] == [r for _ in range(2) for r in first_group for _ in range(2)]
    assert len(items) == len(sampler) == 4 * 3 * 2 * 2
    # chunk 0 holds rows 0..5 of the order = 2 complete groups = 24 items
    assert sampler.item_chunk_ends(0) == [24, 48]


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_num_chunks_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="num_chunks"):
        ChunkPlan(10, bad, seed=0)


def test_more_chunks_than_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="larger than the training set"):
        ChunkPlan(3, 4, seed=0)
