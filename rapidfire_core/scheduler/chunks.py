"""Chunking of the training set and the samplers that feed each run's trainer.

Semantics. For epoch e the training set of n rows is permuted with a generator seeded by
(seed, e) and cut into `num_chunks` contiguous pieces of near-equal size:

    perm_e = randperm(n, seed=(seed, e))
    chunk k of epoch e = perm_e[bounds[k] : bounds[k+1]]     # bounds[0] = 0, bounds[-1] = n

Every run sees the same chunks in the same order, so after chunk k all runs have trained on
the same rows. A run's trainer consumes a stream of *items* built from perm_e (one item per
row for SFT/DPO; GRPO repeats each prompt, see `GroupedRepeatSampler`); `item_chunk_ends(e)[k]`
is the number of items consumed once chunk k has been fully seen, which is what the chunk
gate compares against.

The samplers draw from their own `torch.Generator`, never the global RNG, so data order does
not perturb dropout or sampling of the run that is training.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ChunkPlan:
    """The per-epoch row order and chunk bounds shared by all runs of one `run_fit`."""

    def __init__(self, num_rows: int, num_chunks: int, seed: int) -> None:
        if num_rows <= 0:
            raise ValueError("the training dataset is empty")
        if not isinstance(num_chunks, int) or num_chunks < 1:
            raise ValueError(f"num_chunks must be a positive integer, got {num_chunks!r}")
        if num_chunks > num_rows:
            raise ValueError(f"num_chunks={num_chunks} is larger than the training set ({num_rows} rows)")
        self.num_rows = num_rows
        self.num_chunks = num_chunks
        self.seed = seed
        base, extra = divmod(num_rows, num_chunks)
        sizes = [base + (1 if k < extra else 0) for k in range(num_chunks)]
        self.bounds = [0]
        for size in sizes:
            self.bounds.append(self.bounds[-1] + size)

    def order(self, epoch: int) -> list[int]:
        """The row permutation of `epoch` (deterministic in (seed, epoch))."""
        gen = torch.Generator()
        gen.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_rows, generator=gen).tolist()

    def chunk_rows(self, epoch: int, chunk: int) -> list[int]:
        return self.order(epoch)[self.bounds[chunk] : self.bounds[chunk + 1]]


class ChunkedSampler(Sampler[int]):
    """Yields `plan.order(epoch)`: one item per row, chunk by chunk (SFT, DPO)."""

    def __init__(self, plan: ChunkPlan) -> None:
        self.plan = plan
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(self.plan.order(self.epoch))

    def __len__(self) -> int:
        return self.plan.num_rows

    def item_chunk_ends(self, epoch: int) -> list[int]:
        return self.plan.bounds[1:]


class GroupedRepeatSampler(Sampler[int]):
    """GRPO's sampling structure over the chunk order.

    TRL's GRPO sampler takes groups of `prompts_per_batch` prompts, drops an incomplete last
    group, and yields each group `repeat_count` times with each prompt repeated
    `mini_repeat_count` (= num_generations) times. Here the groups are cut from
    `plan.order(epoch)` instead of a private permutation, so GRPO runs follow the shared chunks:

        for group in groups(perm_e, prompts_per_batch):      # complete groups only
            for _ in range(repeat_count):
                for row in group: yield row `mini_repeat_count` times
    """

    def __init__(
        self, plan: ChunkPlan, mini_repeat_count: int, prompts_per_batch: int, repeat_count: int
    ) -> None:
        if plan.num_rows < prompts_per_batch:
            raise ValueError(
                f"GRPO needs at least {prompts_per_batch} prompts per generation batch, "
                f"the training set has {plan.num_rows}"
            )
        self.plan = plan
        self.mini_repeat_count = mini_repeat_count
        self.prompts_per_batch = prompts_per_batch
        self.repeat_count = repeat_count
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self, epoch: int) -> list[list[int]]:
        order = self.plan.order(epoch)
        size = self.prompts_per_batch
        return [order[i : i + size] for i in range(0, len(order) - size + 1, size)]

    def __iter__(self) -> Iterator[int]:
        for group in self._groups(self.epoch):
            for _ in range(self.repeat_count):
                for row in group:
                    yield from [row] * self.mini_repeat_count

    def __len__(self) -> int:
        groups = self.plan.num_rows // self.prompts_per_batch
        return groups * self.prompts_per_batch * self.mini_repeat_count * self.repeat_count

    def item_chunk_ends(self, epoch: int) -> list[int]:
        """A group belongs to the chunk holding its last row's position."""
        items_per_group = self.prompts_per_batch * self.mini_repeat_count * self.repeat_count
        ends = []
        for end_row in self.plan.bounds[1:]:
            complete_groups = end_row // self.prompts_per_batch
            ends.append(complete_groups * items_per_group)
        return ends
