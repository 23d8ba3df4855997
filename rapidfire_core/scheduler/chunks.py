"""Chunking of the training set and the samplers that feed each run's trainer.

Semantics. For epoch e the training set of n rows is permuted with a generator seeded by
(seed, e) and cut into `num_chunks` contiguous pieces of near-equal size:

    perm_e = randperm(n, seed=(seed, e))
    chunk k of epoch e = perm_e[bounds[k] : bounds[k+1]]     # bounds[0] = 0, bounds[-1] = n

Every run sees the same chunks in the same order, so after chunk k all runs have trained on
the same rows. A run's trainer consumes a stream of *items* built from perm_e (one item per
row for SFT/DPO; GRPO repeats each prompt, see `GroupedRepeatSampler`); `item_chunk_ends()[k]`
is the number of items of a plan epoch consumed once chunk k has been fully seen.

Positions. The items of plan epochs 0, 1, 2, ... form one stream; a run's *position* is the
number of items of that stream it has trained on. A sampler may start at a position `start`
(a warm-started clone continues from its parent's position): trainer epoch t then yields the
stream's items [start + t*L, start + (t+1)*L) with L items per epoch, so every trainer epoch
still has L items and `num_train_epochs` keeps its meaning. With start = 0 trainer epoch t is
plan epoch t. The chunks a run has completed at a position p are counted on the stream:

    chunks_done(p) = (p // L) * num_chunks + #{k : item_chunk_ends()[k] <= p % L}

so runs at the same position have completed the same chunks, whatever their start.

The samplers draw from their own `torch.Generator`, never the global RNG, so data order does
not perturb dropout or sampling of the run that is training.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any

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


class _PlanSampler(Sampler[int], abc.ABC):
    """A trainer's view of the plan's item stream from position `start` (module docstring)."""

    def __init__(self, plan: ChunkPlan, start: int = 0) -> None:
        if start < 0:
            raise ValueError(f"a sampler's start position must be >= 0, got {start}")
        self.plan = plan
        self.start = start
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.items_per_epoch

    @property
    def items_per_epoch(self) -> int:
        return self.item_chunk_ends()[-1]

    @abc.abstractmethod
    def _plan_epoch_items(self, plan_epoch: int) -> list[int]:
        """The dataset index of every item of one plan epoch, in order."""

    @abc.abstractmethod
    def item_chunk_ends(self, epoch: int = 0) -> list[int]:
        """Items of a plan epoch consumed once each chunk is complete (the same every epoch)."""

    def __iter__(self) -> Iterator[int]:
        length = self.items_per_epoch
        first = self.start + self.epoch * length
        plan_epoch, offset = divmod(first, length)
        items = self._plan_epoch_items(plan_epoch)[offset:]
        if offset:
            items += self._plan_epoch_items(plan_epoch + 1)[:offset]
        return iter(items)

    def position(self, trainer_epoch: int, consumed: int) -> int:
        """The stream position after `consumed` items of trainer epoch `trainer_epoch`."""
        return self.start + trainer_epoch * self.items_per_epoch + consumed

    def chunks_done(self, position: int) -> int:
        """Chunks completed (counted across epochs) once the stream is consumed up to `position`."""
        epochs, within = divmod(position, self.items_per_epoch)
        return epochs * self.plan.num_chunks + sum(1 for end in self.item_chunk_ends() if end <= within)

    def aligned(self, position: int) -> int:
        """The latest position <= `position` at which a trainer may start (a whole item group)."""
        return position


class ChunkedSampler(_PlanSampler):
    """Yields `plan.order(epoch)`: one item per row, chunk by chunk (SFT, DPO)."""

    def _plan_epoch_items(self, plan_epoch: int) -> list[int]:
        return self.plan.order(plan_epoch)

    def item_chunk_ends(self, epoch: int = 0) -> list[int]:
        return self.plan.bounds[1:]


class GroupedRepeatSampler(_PlanSampler):
    """GRPO's sampling structure over the chunk order.

    TRL's GRPO sampler takes groups of `prompts_per_batch` prompts, drops an incomplete last
    group, and yields each group `repeat_count` times with each prompt repeated
    `mini_repeat_count` (= num_generations) times. Here the groups are cut from
    `plan.order(epoch)` instead of a private permutation, so GRPO runs follow the shared chunks:

        for group in groups(perm_e, prompts_per_batch):      # complete groups only
            for _ in range(repeat_count):
                for row in group: yield row `mini_repeat_count` times

    A start position is a whole number of groups (`aligned`): a generation batch is never split.
    """

    def __init__(
        self,
        plan: ChunkPlan,
        mini_repeat_count: int,
        prompts_per_batch: int,
        repeat_count: int,
        start: int = 0,
    ) -> None:
        if plan.num_rows < prompts_per_batch:
            raise ValueError(
                f"GRPO needs at least {prompts_per_batch} prompts per generation batch, "
                f"the training set has {plan.num_rows}"
            )
        self.mini_repeat_count = mini_repeat_count
        self.prompts_per_batch = prompts_per_batch
        self.repeat_count = repeat_count
        self.items_per_group = prompts_per_batch * mini_repeat_count * repeat_count
        super().__init__(plan, start)
        if start % self.items_per_group:
            raise ValueError(f"a GRPO start position must be whole groups of {self.items_per_group} items")

    def _plan_epoch_items(self, plan_epoch: int) -> list[int]:
        order = self.plan.order(plan_epoch)
        size = self.prompts_per_batch
        items: list[int] = []
        for i in range(0, len(order) - size + 1, size):
            group = order[i : i + size]
            for _ in range(self.repeat_count):
                for row in group:
                    items.extend([row] * self.mini_repeat_count)
        return items

    def item_chunk_ends(self, epoch: int = 0) -> list[int]:
        """A group belongs to the chunk holding its last row's position."""
        return [
            (end_row // self.prompts_per_batch) * self.items_per_group for end_row in self.plan.bounds[1:]
        ]

    def aligned(self, position: int) -> int:
        return position - position % self.items_per_group


def make_sampler(trainer_type: str, trainer: Any, plan: ChunkPlan, start: int = 0) -> _PlanSampler:
    """The chunk sampler for one run's trainer, starting at stream position `start` (aligned down)."""
    if trainer_type == "GRPO":
        args = trainer.args
        sampler: _PlanSampler = GroupedRepeatSampler(
            plan,
            mini_repeat_count=trainer.num_generations,
            prompts_per_batch=args.generation_batch_size // trainer.num_generations,
            repeat_count=trainer.num_iterations * args.steps_per_generation,
        )
    else:
        sampler = ChunkedSampler(plan)
    sampler.start = sampler.aligned(start)
    return sampler
