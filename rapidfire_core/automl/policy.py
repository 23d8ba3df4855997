"""Automatic searches decide at chunk-round ends, with the same commands a user issues.

A config group that searches automatically (`RFSuccessiveHalving`, `RFOptuna`,
`RFPopulationBased`) gives `run_fit` a `SearchPolicy`:

    policy = group.search_policy()
    specs = group.expand()                      # nothing persisted yet
    policy.check(has_eval, metrics)             # before training: the objective can be computed
    policy.bind(experiment_path)                # training starts: where it keeps its own state
    run_ids = controller.add_runs(specs, ...)
    policy.start(run_ids)
    controller.hooks.round_end += [policy.round_end]     # decisions -> stop / clone commands

Its decisions are commands with source "automl": they are applied like any other (at the next
optimizer step of the run they affect), appear in the command history, the dashboard and
MLflow, and the user can override them (resume a stopped run, stop a clone). A policy manages
the runs it started and every run cloned from them (by it or by hand).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from rapidfire_core.automl.objective import Objective
from rapidfire_core.control.run_status import IN_FLIGHT, RunStatus
from rapidfire_core.errors import ConfigError


def positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """A search setting that must be an int >= minimum (ConfigError naming it otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class SearchPolicy(abc.ABC):
    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.roots: set[int] = set()
        self.experiment_path: Path | None = None

    def check(self, has_eval: bool, metrics: Any = None) -> None:
        """Before training: the objective can be computed. metrics: the sweep's
        `automl.metric_names.RunMetricNames`; the objective is resolved to its logged name."""
        self.objective.check(has_eval)
        if metrics is not None:
            self.objective = self.objective.resolved(metrics)

    def bind(self, experiment_path: Path) -> None:
        self.experiment_path = Path(experiment_path)

    def start(self, run_ids: list[int]) -> None:
        self.roots.update(run_ids)

    @abc.abstractmethod
    def round_end(self, controller: Any, round_number: int) -> None:
        """Look at the managed runs after a chunk round; submit stop / clone commands."""

    # ---- helpers ---------------------------------------------------------------------------------
    def managed_runs(self, controller: Any) -> list[dict[str, Any]]:
        """Store rows of the runs this policy manages: its own and their clones, transitively."""
        runs = controller.store.runs()
        managed = set(self.roots)
        for run in runs:  # run ids grow, so a parent always comes before its clones
            if run["parent_run_id"] in managed:
                managed.add(run["run_id"])
        return [run for run in runs if run["run_id"] in managed]

    @staticmethod
    def in_flight(run: dict[str, Any]) -> bool:
        return RunStatus(run["status"]) in IN_FLIGHT

    @staticmethod
    def submit(controller: Any, op: str, run_id: int, payload: dict[str, Any] | None = None) -> Any:
        return controller.commands.submit(op, run_id, payload, source="automl")
