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


# ---- rows a run's trainer drops: positions in plan rows ------------------------------------------
def _without(plan, rows):
    """source_rows of a trainer that dropped `rows` (TRL keeps the others, in order)."""
    return [r for r in range(plan.num_rows) if r not in set(rows)]


def test_a_run_trains_the_rows_of_each_chunk_it_kept_in_the_plans_order():
    plan = ChunkPlan(12, 3, seed=0)
    dropped = [plan.order(0)[1], plan.order(0)[6]]
    kept = _without(plan, dropped)
    sampler = ChunkedSampler(plan, kept)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        # indices into the trimmed dataset: their source rows are the plan's order minus the dropped rows
        assert [kept[i] for i in sampler] == [r for r in plan.order(epoch) if r not in dropped]
        assert len(sampler) == 10
    assert sampler.item_chunk_ends(0) == [3, 6, 10]  # chunk 1 lost one row, chunk 2 one
    # positions count plan rows: just after the last row trained (a dropped row inside a chunk is
    # passed with the next kept one); after the 3 kept rows of chunk 1 the run has passed its 4 rows
    assert [sampler.position(0, c) for c in range(5)] == [0, 1, 3, 4, 5]
    assert [sampler.chunks_done(sampler.position(0, c)) for c in (2, 3, 10)] == [0, 1, 3]
    assert sampler.position(1, 0) == 12 and sampler.chunks_done(12) == 3


def test_a_run_that_drops_a_whole_chunk_completes_it_with_the_chunk_before():
    plan = ChunkPlan(12, 3, seed=0)
    kept = _without(plan, plan.chunk_rows(0, 1))  # epoch 0's second chunk, all of it
    sampler = ChunkedSampler(plan, kept)
    assert sampler.item_chunk_ends(0) == [4, 4, 8]
    # the 4th item ends chunk 1; chunk 2 has nothing left for this run: position 8, two chunks done
    assert sampler.position(0, 3) == 3 and sampler.position(0, 4) == 8
    assert sampler.chunks_done(sampler.position(0, 4)) == 2
    # a run whose first chunk is all dropped has completed it before its first step
    first = ChunkedSampler(plan, _without(plan, plan.chunk_rows(0, 0)))
    assert first.start_position == 4 and first.chunks_done(first.start_position) == 1


def test_a_start_position_is_the_same_place_in_the_plan_for_runs_that_drop_differently():
    plan = ChunkPlan(12, 3, seed=0)
    order = plan.order(0)
    parent = ChunkedSampler(plan, _without(plan, [order[2]]))
    position = parent.position(0, 4)  # 4 items: rows order[0], [1], [3], [4]
    assert position == 5
    # a clone that keeps order[2] but drops order[5] starts at the parent's place: order[6] on
    clone_kept = _without(plan, [order[5]])
    clone = ChunkedSampler(plan, clone_kept, start=position)
    assert [clone_kept[i] for i in clone][:3] == [order[6], order[7], order[8]]
    assert clone.start_position == 5 and clone.chunks_done(clone.start_position) == 1
    # its trainer epochs still hold all its kept rows: the rest of plan epoch 0, then epoch 1's start
    assert len(list(clone)) == len(clone) == 11
    # a clone started at a chunk's end whose own next chunk is all dropped starts after that chunk
    skip_next = ChunkedSampler(plan, _without(plan, plan.chunk_rows(0, 1)), start=4)
    assert skip_next.start_position == 8 and skip_next.chunks_done(8) == 2


def test_grpo_groups_are_cut_from_the_kept_rows_and_a_dropped_chunk_completes():
    plan = ChunkPlan(12, 3, seed=0)
    order = plan.order(0)
    kept = _without(plan, plan.chunk_rows(0, 1))
    sampler = GroupedRepeatSampler(
        plan, mini_repeat_count=2, prompts_per_batch=2, repeat_count=1, source_rows=kept
    )
    items = [kept[i] for i in sampler]
    # 8 kept rows -> 4 groups of 2 prompts, each prompt twice; chunk 2's rows never appear
    assert items[:4] == [order[0], order[0], order[1], order[1]]
    assert sorted(set(items)) == sorted(set(order) - set(plan.chunk_rows(0, 1)))
    assert sampler.item_chunk_ends(0) == [8, 8, 16]
    # a partly consumed group does not count; the second group ends chunk 1 and skips chunk 2
    assert [sampler.position(0, c) for c in (0, 3, 4, 8)] == [0, 0, 2, 8]
    assert sampler.chunks_done(8) == 2
    # a clone with another group structure starts at the parent's place in plan rows
    clone = GroupedRepeatSampler(plan, mini_repeat_count=4, prompts_per_batch=1, repeat_count=1, start=8)
    assert list(clone)[:4] == [order[8]] * 4


def test_too_few_kept_rows_are_a_clear_error():
    plan = ChunkPlan(6, 2, seed=0)
    with pytest.raises(
        ValueError, match="GRPO needs at least 4 prompts .* has 3 after the trainer dropped 3"
    ):
        GroupedRepeatSampler(
            plan, mini_repeat_count=2, prompts_per_batch=4, repeat_count=1, source_rows=[0, 1, 2]
        )
    with pytest.raises(ValueError, match="dropped every training row"):
        ChunkedSampler(plan, [])
    with pytest.raises(ValueError, match="source rows must be increasing"):
        ChunkedSampler(plan, [2, 1])


def test_num_chunks_must_be_an_int_not_a_bool():
    with pytest.raises(ValueError, match="num_chunks must be a positive integer, got True"):
        ChunkPlan(10, True, seed=0)  # a bool is an int to Python: it was taken as 1 chunk


@pytest.mark.parametrize("bad", ["x", -1, 2**32, 1.5, True])
def test_the_chunk_seed_must_be_an_int_in_numpys_range(bad):
    with pytest.raises(
        ValueError, match=r"seed \(the chunk order's seed\) must be an integer in \[0, 2\*\*32\)"
    ):
        ChunkPlan(10, 2, seed=bad)
