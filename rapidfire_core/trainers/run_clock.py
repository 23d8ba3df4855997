"""A run's own training time, and TRL's end-of-train speed metrics restated with it.

transformers' ``Trainer.train`` logs ``train_runtime`` (and ``train_samples_per_second``,
``train_steps_per_second``) from the wall time between the start and the end of its
``train()`` call. Interleaved with other runs, that call spans every sibling's turns too (a run
whose own compute was ~65 s reported ~190 s). ``RunClock`` counts only the time the run held
the turn; ``own_runtime_metrics`` restates those metrics with it:

    train_runtime             the run's own training time (s)
    train_samples_per_second  TRL's value * wall / own   (the same samples, in the run's own time)
    train_steps_per_second    TRL's value * wall / own
    train_wall_runtime        TRL's train_runtime: first step to last, siblings' turns included
"""

from __future__ import annotations

import time
from typing import Any

_RATES = ("train_samples_per_second", "train_steps_per_second")


class RunClock:
    """Accumulates the seconds between each `start()` and the following `stop()`."""

    def __init__(self) -> None:
        self._total = 0.0
        self._since: float | None = None

    def start(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self._total += time.perf_counter() - self._since
            self._since = None

    def elapsed(self) -> float:
        running = 0.0 if self._since is None else time.perf_counter() - self._since
        return self._total + running


def own_runtime_metrics(logs: dict[str, Any], own_seconds: float) -> dict[str, Any]:
    """`logs` with TRL's train_runtime metrics restated in the run's own time (module docstring);
    unchanged when `logs` holds no train_runtime."""
    wall = logs.get("train_runtime")
    if not isinstance(wall, (int, float)) or own_seconds <= 0:
        return logs
    out = dict(logs)
    out["train_wall_runtime"] = wall
    out["train_runtime"] = round(own_seconds, 4)
    for key in _RATES:
        rate = logs.get(key)
        if isinstance(rate, (int, float)):
            out[key] = round(rate * wall / own_seconds, 3)
    return out


__all__ = ["RunClock", "own_runtime_metrics"]
