"""A run's own training time, and TRL's end-of-train speed metrics restated with it.

transformers' ``Trainer.train`` logs ``train_runtime`` (and ``train_samples_per_second``,
``train_steps_per_second``) from the wall time between the start and the end of its training
loop. Interleaved with other runs, that loop spans every sibling's turns too (a run whose own
compute was ~65 s reported ~190 s). A run only waits at its step boundaries, inside that loop,
so ``RunClock`` counts the seconds it waited (paused: a sibling's turn, commands, a STOP) and
``own_runtime_metrics`` takes them out. (A member of a fused cohort also pauses while the cohort
runs the members' fused forward and backward: that is its compute, and is not counted as waiting;
the cohort's turns count for each member.)

    train_runtime             TRL's train_runtime - the seconds the run waited (s)
    train_samples_per_second  TRL's value * wall / own   (the same samples, in the run's own time)
    train_steps_per_second    TRL's value * wall / own
    train_wall_runtime        TRL's train_runtime: first step to last, siblings' turns included
"""

from __future__ import annotations

import time
from typing import Any

_RATES = ("train_samples_per_second", "train_steps_per_second")


class RunClock:
    """Accumulates the seconds between each `pause()` and the following `resume()`."""

    def __init__(self) -> None:
        self._waited = 0.0
        self._since: float | None = None

    def pause(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def resume(self) -> None:
        if self._since is not None:
            self._waited += time.perf_counter() - self._since
            self._since = None

    def waited(self) -> float:
        """Seconds paused so far (the current pause included)."""
        current = 0.0 if self._since is None else time.perf_counter() - self._since
        return self._waited + current


def own_runtime_metrics(logs: dict[str, Any], waited_seconds: float) -> dict[str, Any]:
    """`logs` with TRL's train_runtime metrics restated in the run's own time (module docstring);
    unchanged when `logs` holds no train_runtime."""
    wall = logs.get("train_runtime")
    if not isinstance(wall, (int, float)):
        return logs
    own = wall - waited_seconds
    if own <= 0:  # a clock step (the two clocks differ by microseconds): keep TRL's own figures
        return logs
    out = dict(logs)
    out["train_wall_runtime"] = wall
    out["train_runtime"] = round(own, 4)
    for key in _RATES:
        rate = logs.get(key)
        if isinstance(rate, (int, float)):
            out[key] = round(rate * wall / own, 3)
    return out


__all__ = ["RunClock", "own_runtime_metrics"]
