"""``RfDb``: RapidFire AI's experiment database, as its notebooks read it, over our folders.

RapidFire AI keeps experiments in one database; here each experiment is a folder under the
experiments root holding its own stores (`runs.db`), so `RfDb` reads the root:

    db = RfDb()                                   # root: $RF_EXPERIMENT_PATH or ./rapidfire_experiments
    root = db.get_experiments_path("my-exp")      # the root folder that holds experiment "my-exp"
    f"{root}/my-exp/tensorboard_logs"             # where its TensorBoard event files are
    db.get_all_experiment_names()                 # every experiment under the root
    db.get_all_runs("my-exp")                     # {run_id: run record} of one experiment

Read-only: nothing here writes (steer runs with `Experiment`, the notebook panel, the CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rapidfire_core.dashboard.experiments import (
    ExperimentNotFound,
    default_root,
    is_experiment_dir,
    list_experiments,
)


class RfDb:
    def __init__(self, experiments_path: str | Path | None = None) -> None:
        """experiments_path: the experiments root (default as `Experiment`'s)."""
        self.root = Path(experiments_path) if experiments_path is not None else default_root()

    def get_experiments_path(self, experiment_name: str) -> Path:
        """The root folder holding experiment `experiment_name` (its folder is
        `<root>/<experiment_name>`); ExperimentNotFound if the root holds no such experiment."""
        if not is_experiment_dir(self.root / experiment_name):
            raise ExperimentNotFound(f"no experiment {experiment_name!r} under {self.root.resolve()}")
        return self.root.resolve()

    def get_all_experiment_names(self) -> list[str]:
        """Every experiment under the root, most recently written first."""
        return [e["name"] for e in list_experiments(self.root)]

    def get_all_runs(self, experiment_name: str) -> dict[int, dict[str, Any]]:
        """{run_id: record} of one experiment (status, error, knobs, progress; `RunStore.runs`)."""
        from rapidfire_core.control import RunStore

        store = RunStore(self.get_experiments_path(experiment_name) / experiment_name / "runs.db")
        try:
            return {run["run_id"]: run for run in store.runs()}
        finally:
            store.close()


__all__ = ["RfDb"]
