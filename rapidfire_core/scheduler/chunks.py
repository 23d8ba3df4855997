"""Chunking of the training set and the samplers that feed each run's trainer.

Semantics. For epoch e the training set of n (source) rows is permuted with a generator seeded
by (seed, e) and cut into `num_chunks` contiguous pieces of near-equal size:

    perm_e = randperm(n, seed=(seed, e))
    chunk k of epoch e = perm_e[bounds[k] : bounds[k+1]]     # bounds[0] = 0, bounds[-1] = n

Every run sees the same chunks of the same source rows in the same order, so after chunk k
all runs have trained on the same rows.

Rows a run's trainer drops. TRL drops rows while it prepares a run's dataset (SFT: rows that
truncation to `max_length` leaves without a single trained token; DPO: prompts of `max_length`
tokens or more), and runs with different settings drop different rows. A chunk is still the
same set of *source* rows for every run: each run trains on the rows of the chunk that its
trainer kept, in the plan's order, and skips the ones it dropped. So chunk k names the same
examples for every run (chunk-1 numbers stay comparable), and a run whose trainer dropped a
whole chunk completes that chunk without a step, together with the chunk before it (the round
loop then lets it sit out that round, so it stays aligned with the others).

Items and groups. A run's trainer consumes a stream of *items* (dataset indices into the
trainer's own, possibly trimmed, dataset), cut into *groups*: for SFT/DPO a group is one kept
row; for GRPO a group is one generation batch of prompts, each repeated (see
`GroupedRepeatSampler`). A group's *anchor* is its last row; a group belongs to the chunk of
its anchor. Every plan epoch has the same number G of groups (all kept rows, or all complete
generation batches of them), so every trainer epoch has the same number L = G * group_size of
items and `num_train_epochs` keeps its meaning.

Positions are in plan-row terms, the same for every run whatever it dropped. Plan epochs
0, 1, 2, ... form one stream of rows (stream row p = row p % n of plan epoch p // n). A run at
position p has trained on, or skipped, every row of the stream before p:

    position after consuming whole groups up to group j  = advance(anchor_j + 1)
    position before consuming anything                  = advance(start)
    advance(p): while no group of the run is anchored in [p, end of p's chunk):
                    p = end of p's chunk                 # the rest of the chunk is dropped
    chunks_done(p) = (p // n) * num_chunks + #{k : bounds[k+1] <= p % n}

A partly consumed group (GRPO: a generation batch split over optimizer steps) does not count
until it is complete. A sampler started at position `start` (a warm-started clone continues
from its parent's position) begins with its first group anchored at or after `start`, so a
clone with its own filter (or its own GRPO batch structure) starts at the same place of the
shared chunk order, skipping the rows it drops itself: trainer epoch t then yields the
stream's items [s + t*L, s + (t+1)*L) from that first group s. With start = 0, trainer epoch t
is plan epoch t.

The samplers draw from their own `torch.Generator`, never the global RNG, so data order does
not perturb dropout or sampling of the run that is training.
"""

from __future__ import annotations

import abc
import bisect
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Sampler

SEED_LIMIT = 2**32  # numpy's seed range, which TRL's seeds share: one rule for every seed
_CACHED_EPOCHS = 3  # a run reads at most its current and next plan epoch; one spare


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class ChunkPlan:
    """The per-epoch row order and chunk bounds shared by all runs of one `run_fit`."""

    def __init__(self, num_rows: int, num_chunks: int, seed: int) -> None:
        if num_rows <= 0:
            raise ValueError("the training dataset is empty")
        if not _is_int(num_chunks) or num_chunks < 1:
            raise ValueError(f"num_chunks must be a positive integer, got {num_chunks!r}")
        if not _is_int(seed) or not 0 <= seed < SEED_LIMIT:
            raise ValueError(f"seed (the chunk order's seed) must be an integer in [0, 2**32), got {seed!r}")
        if num_chunks > num_rows:
            raise ValueError(f"num_chunks={num_chunks} is larger than the training set ({num_rows} rows)")
        self.num_rows = int(num_rows)
        self.num_chunks = int(num_chunks)
        self.seed = int(seed)
        base, extra = divmod(self.num_rows, self.num_chunks)
        sizes = [base + (1 if k < extra else 0) for k in range(self.num_chunks)]
        self.bounds = [0]
        for size in sizes:
            self.bounds.append(self.bounds[-1] + size)
        self._orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        """The row permutation of `epoch` (deterministic in (seed, epoch))."""
        if epoch not in self._orders:
            gen = torch.Generator()
            gen.manual_seed(self.seed * 1_000_003 + epoch)
            if len(self._orders) >= _CACHED_EPOCHS:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = torch.randperm(self.num_rows, generator=gen).tolist()
        return list(self._orders[epoch])

    def chunk_rows(self, epoch: int, chunk: int) -> list[int]:
        return self.order(epoch)[self.bounds[chunk] : self.bounds[chunk + 1]]

    # ---- the row stream (module docstring) ----------------------------------------------------
    def chunk_end_after(self, position: int) -> int:
        """The end of the chunk holding stream row `position` (the first chunk bound > position)."""
        epoch, offset = divmod(position, self.num_rows)
        return epoch * self.num_rows + self.bounds[bisect.bisect_right(self.bounds, offset)]

    def chunks_done(self, position: int) -> int:
        """Chunks (counted across epochs) whose every row lies before stream row `position`."""
        epoch, offset = divmod(position, self.num_rows)
        return epoch * self.num_chunks + bisect.bisect_right(self.bounds, offset) - 1


@dataclass(frozen=True)
class _EpochItems:
    items: list[int]  # dataset index of every item of the plan epoch, in order (L of them)
    anchors: list[int]  # plan-epoch offset of each group's anchor row, ascending (G of them)


class _PlanSampler(Sampler[int], abc.ABC):
    """A trainer's view of the plan from stream row `start` (module docstring).

    source_rows: the source row of each index of the trainer's dataset (TRL's dataset after it
    dropped rows), strictly increasing; None when the trainer kept every row in place."""

    group_size: int = 1

    def __init__(self, plan: ChunkPlan, source_rows: Sequence[int] | None = None, start: int = 0) -> None:
        if not _is_int(start) or start < 0:
            raise ValueError(f"a sampler's start position must be an integer >= 0, got {start!r}")
        self.plan = plan
        self.epoch = 0
        self._index_of = _index_of_source_rows(plan.num_rows, source_rows)
        self.num_kept = sum(1 for i in self._index_of if i >= 0)
        self.groups_per_epoch = self._groups_in(self.num_kept)
        if self.groups_per_epoch < 1:
            raise ValueError(self._too_few_rows_message())
        self._epochs: dict[int, _EpochItems] = {}
        self.start = int(start)
        self.start_group = self._first_group_at(self.start)

    # ---- what a kind of trainer defines ------------------------------------------------------------
    @abc.abstractmethod
    def _groups_in(self, num_kept: int) -> int:
        """Groups per plan epoch when the trainer kept `num_kept` rows."""

    @abc.abstractmethod
    def _cut(self, kept: list[tuple[int, int]]) -> _EpochItems:
        """The items and group anchors of one plan epoch from its kept (offset, dataset index) rows."""

    def _too_few_rows_message(self) -> str:
        return "the trainer dropped every training row: there is nothing to train on"

    # ---- the torch Sampler ------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.items_per_epoch

    @property
    def items_per_epoch(self) -> int:
        return self.groups_per_epoch * self.group_size

    def __iter__(self) -> Iterator[int]:
        length = self.items_per_epoch
        first = self.start_group * self.group_size + self.epoch * length
        plan_epoch, offset = divmod(first, length)
        items = self._plan_epoch(plan_epoch).items[offset:]
        if offset:
            items = items + self._plan_epoch(plan_epoch + 1).items[:offset]
        return iter(items)

    # ---- positions (module docstring) -------------------------------------------------------------
    def position(self, trainer_epoch: int, consumed: int) -> int:
        """The stream row position after `consumed` items of trainer epoch `trainer_epoch`."""
        consumed = min(max(consumed, 0), self.items_per_epoch)  # a last partial batch ends the epoch
        item = self.start_group * self.group_size + trainer_epoch * self.items_per_epoch + consumed
        groups = item // self.group_size
        if groups <= self.start_group:
            return self.advance(self.start)
        return self.advance(self._anchor(groups - 1) + 1)

    @property
    def start_position(self) -> int:
        return self.advance(self.start)

    def chunks_done(self, position: int) -> int:
        """Chunks completed (counted across epochs) once the stream is passed up to `position`."""
        return self.plan.chunks_done(position)

    def advance(self, position: int) -> int:
        """`position` moved past the chunks whose remaining rows this run drops (none anchored there)."""
        while True:
            chunk_end = self.plan.chunk_end_after(position)
            if self._anchor(self._first_group_at(position)) < chunk_end:
                return position
            position = chunk_end

    def item_chunk_ends(self, epoch: int = 0) -> list[int]:
        """Items of plan epoch `epoch` consumed once each of its chunks is complete."""
        anchors = self._plan_epoch(epoch).anchors
        return [bisect.bisect_left(anchors, end) * self.group_size for end in self.plan.bounds[1:]]

    # ---- internals ----------------------------------------------------------------------------------
    def _plan_epoch(self, epoch: int) -> _EpochItems:
        if epoch not in self._epochs:
            order = self.plan.order(epoch)
            kept = [
                (offset, self._index_of[row]) for offset, row in enumerate(order) if self._index_of[row] >= 0
            ]
            if len(self._epochs) >= _CACHED_EPOCHS:
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = self._cut(kept)
        return self._epochs[epoch]

    def _anchor(self, group: int) -> int:
        """Stream row of global group `group`'s anchor."""
        epoch, index = divmod(group, self.groups_per_epoch)
        return epoch * self.plan.num_rows + self._plan_epoch(epoch).anchors[index]

    def _first_group_at(self, position: int) -> int:
        """Global index of the first group anchored at or after stream row `position`."""
        epoch, offset = divmod(position, self.plan.num_rows)
        return epoch * self.groups_per_epoch + bisect.bisect_left(self._plan_epoch(epoch).anchors, offset)


def _index_of_source_rows(num_rows: int, source_rows: Sequence[int] | None) -> list[int]:
    """source row -> index in the trainer's dataset (-1: dropped)."""
    if source_rows is None:
        return list(range(num_rows))
    index_of = [-1] * num_rows
    previous = -1
    for index, row in enumerate(source_rows):
        if not _is_int(row) or not previous < row < num_rows:
            raise ValueError(
                f"source rows must be increasing rows of the {num_rows}-row training set; "
                f"got {row!r} at index {index}"
            )
        index_of[row] = index
        previous = row
    return index_of


class ChunkedSampler(_PlanSampler):
    """Yields the kept rows of `plan.order(epoch)`: one item per row, chunk by chunk (SFT, DPO)."""

    def _groups_in(self, num_kept: int) -> int:
        return num_kept

    def _cut(self, kept: list[tuple[int, int]]) -> _EpochItems:
        return _EpochItems(items=[index for _, index in kept], anchors=[offset for offset, _ in kept])


class GroupedRepeatSampler(_PlanSampler):
    """GRPO's sampling structure over the chunk order.

    TRL's GRPO sampler takes groups of `prompts_per_batch` prompts, drops an incomplete last
    group, and yields each group `repeat_count` times with each prompt repeated
    `mini_repeat_count` (= num_generations) times. Here the groups are cut from the kept rows of
    `plan.order(epoch)` instead of a private permutation, so GRPO runs follow the shared chunks:

        for group in groups(kept rows of perm_e, prompts_per_batch):   # complete groups only
            for _ in range(repeat_count):
                for row in group: yield row `mini_repeat_count` times

    A group (a generation batch) is never split: a run starts at a group boundary, and a group
    counts as trained only once all its items are consumed.
    """

    def __init__(
        self,
        plan: ChunkPlan,
        mini_repeat_count: int,
        prompts_per_batch: int,
        repeat_count: int,
        start: int = 0,
        source_rows: Sequence[int] | None = None,
    ) -> None:
        self.mini_repeat_count = mini_repeat_count
        self.prompts_per_batch = prompts_per_batch
        self.repeat_count = repeat_count
        self.group_size = prompts_per_batch * mini_repeat_count * repeat_count
        super().__init__(plan, source_rows, start)

    def _groups_in(self, num_kept: int) -> int:
        return num_kept // self.prompts_per_batch

    def _too_few_rows_message(self) -> str:
        dropped = self.plan.num_rows - self.num_kept
        kept = f"{self.num_kept} after the trainer dropped {dropped}" if dropped else f"{self.num_kept}"
        return (
            f"GRPO needs at least {self.prompts_per_batch} prompts per generation batch, "
            f"the training set has {kept}"
        )

    def _cut(self, kept: list[tuple[int, int]]) -> _EpochItems:
        size = self.prompts_per_batch
        items: list[int] = []
        anchors: list[int] = []
        for i in range(0, len(kept) - size + 1, size):
            group = kept[i : i + size]
            anchors.append(group[-1][0])
            for _ in range(self.repeat_count):
                for _, index in group:
                    items.extend([index] * self.mini_repeat_count)
        return _EpochItems(items=items, anchors=anchors)


def make_sampler(
    trainer_type: str,
    trainer: Any,
    plan: ChunkPlan,
    start: int = 0,
    source_rows: Sequence[int] | None = None,
) -> _PlanSampler:
    """The chunk sampler for one run's trainer from stream row `start` (module docstring).

    source_rows: the source row of each row of the trainer's dataset (None: every row kept)."""
    if trainer_type == "GRPO":
        args = trainer.args
        return GroupedRepeatSampler(
            plan,
            mini_repeat_count=trainer.num_generations,
            prompts_per_batch=args.generation_batch_size // trainer.num_generations,
            repeat_count=trainer.num_iterations * args.steps_per_generation,
            start=start,
            source_rows=source_rows,
        )
    return ChunkedSampler(plan, source_rows, start)
