"""Which executor trains which turn taker in a chunk round: balanced by measured time per chunk.

At the start of each round (a chunk boundary for every run) the round loop
(`parallel_rounds`) asks a placement where each of the round's takers (a run, or a fused
cohort as a whole) trains; a taker placed elsewhere than where it is moves there through its
chunk checkpoint (`RunController.move`).

`BalancedPlacement` (the default) is longest-processing-time-first over each taker's measured
seconds for its last chunk (takers not measured yet count as the mean of those measured, or 1):

    for taker in takers, longest first:
        best = the executor whose load is smallest
        stay = the taker's current executor
        put it on `stay` if load[stay] <= load[best] + move_cost, else on best

so a taker stays where its state is unless moving it shortens the round by more than a move
costs (`move_cost`: the measured mean seconds of a move).

`RotatingPlacement` moves every taker to the next executor at every round: only for tests and
benchmarks of moves (the numbers must not change).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Item:
    """A turn taker to place: its (smallest) run id, its seconds for its last chunk (None: not
    measured yet), the index of the executor that holds it."""

    run_id: int
    seconds: float | None
    current: int


class Placement(Protocol):
    def assign(self, items: Sequence[Item], executors: Sequence[int], move_cost: float) -> dict[int, int]:
        """{taker run id: the index of the executor it trains on this round} over `executors` (live)."""
        ...


def _estimates(items: Sequence[Item]) -> dict[int, float]:
    known = [i.seconds for i in items if i.seconds is not None]
    default = sum(known) / len(known) if known else 1.0
    return {i.run_id: i.seconds if i.seconds is not None else default for i in items}


class BalancedPlacement:
    """Longest first onto the least loaded executor, staying put when that costs less than a move."""

    def assign(self, items: Sequence[Item], executors: Sequence[int], move_cost: float) -> dict[int, int]:
        seconds = _estimates(items)
        load = {e: 0.0 for e in executors}
        plan = {}
        for item in sorted(items, key=lambda i: (-seconds[i.run_id], i.run_id)):
            best = min(executors, key=lambda e: (load[e], e))
            stay = item.current in load and load[item.current] <= load[best] + move_cost
            target = item.current if stay else best
            load[target] += seconds[item.run_id]
            plan[item.run_id] = target
        return plan


class RotatingPlacement:
    """Every taker moves to the next live executor at every round (module docstring)."""

    def assign(self, items: Sequence[Item], executors: Sequence[int], move_cost: float) -> dict[int, int]:
        plan = {}
        for item in items:
            at = executors.index(item.current) if item.current in executors else -1
            plan[item.run_id] = executors[(at + 1) % len(executors)]
        return plan


__all__ = ["BalancedPlacement", "Item", "Placement", "RotatingPlacement"]
