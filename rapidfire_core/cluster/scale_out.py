"""The run controller of an experiment that trains on several executors (Ray actors).

`Experiment(..., num_gpus=N)` (N >= 2) or `cluster=` makes its controller here: the same
`scheduler.controller.RunController` as on one device, driving one `RayExecutor` per device
instead of the in-process executor, with the round loop that trains on all of them at once
(`parallel_rounds`) and balanced placement (`placement.BalancedPlacement`). New runs go to the
executor that holds the fewest runs; the loop rebalances at chunk boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rapidfire_core.cluster.parallel_rounds import parallel_rounds
from rapidfire_core.cluster.placement import Placement
from rapidfire_core.cluster.ray_executor import RayExecutor
from rapidfire_core.cluster.ray_runtime import connect
from rapidfire_core.scheduler.controller import RunController


def fewest_runs(executors: Sequence[RayExecutor], spec: Any) -> RayExecutor:
    """The placement of a new run: the executor holding the fewest runs (the first of equals)."""
    return min(executors, key=lambda e: (len(e.held), e.index))


def scaled_out_controller(
    path: Path,
    store: Any,
    commands: Any,
    tracker: Any,
    say: Any,
    count: int,
    cluster: str | None,
    threads: int | None,
    placement: Placement | None = None,
) -> RunController:
    """A run controller over `count` executor actors on Ray (`ray_runtime.connect`: a local Ray,
    the one already initialised, or the cluster at `cluster`); threads: CPUs of a CPU executor."""
    shape = connect(count, cluster, threads)
    executors = [RayExecutor(index, shape) for index in range(count)]
    controller = RunController(path, store, commands, tracker, say, executors=executors, placer=fewest_runs)
    controller.round_loop = parallel_rounds(placement)
    return controller


__all__ = ["fewest_runs", "scaled_out_controller"]
