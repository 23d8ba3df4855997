"""Weights & Biases tracking: one W&B run per engine run, in one W&B project, grouped by experiment.

The project is ``$WANDB_PROJECT`` or the experiment's name; ``$WANDB_ENTITY``, ``$WANDB_MODE``
(``offline``: nothing leaves the machine, ``wandb sync`` uploads later) and ``$WANDB_API_KEY``
are W&B's own and read by it. Local files go to ``$WANDB_DIR`` when set, else the experiment
directory (``<experiment>/wandb/``). Without W&B credentials (no ``$WANDB_API_KEY``, no
``wandb login``) and no ``$WANDB_MODE``, the runs are logged offline with a warning: W&B would
otherwise stop the sweep at a login prompt.

The rules the other backends follow hold here too:

* params: the run's config, given at start and updated with the effective values (``log_params``);
  tags go in as ``tag.<name>`` entries, as with Trackio;
* metrics: every numeric value at the engine's step (``run.log(values, step=step)``);
* resume: a stopped run (status KILLED) that resumes re-opens the SAME W&B run (its id is fixed:
  ``<experiment>-<run name>``, so two experiments sharing a project never collide), and its
  metrics go on at their steps; the end status is kept in the run's summary as ``rapidfire.status``
  (a FAILED run also exits non-zero, which W&B shows as failed);
* delete: W&B runs are deleted from its UI or API, never by the engine; a deleted run is finished
  with ``rapidfire.status = DELETED`` (as TensorBoard keeps its directory, and MLflow its trash).

W&B's ``init`` is made per run with ``reinit="create_new"`` and the ``Run`` objects are used
directly (never the global ``wandb.log``), since many runs log at once in one process. Console
capture, system-metrics sampling, git and code saving are off: the sweep's output stays ours.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PROJECT_ENV = "WANDB_PROJECT"
DIR_ENV = "WANDB_DIR"
STATUS_KEY = "rapidfire.status"
# W&B run ids may not contain / \ # ? % : and are at most 128 characters.
_UNSAFE_ID_CHARS = re.compile(r"[/\\#?%:\s]+")
_ID_LIMIT = 128


def wandb_run_id(experiment_name: str, run_name: str) -> str:
    """The W&B run id of an engine run: stable, so a resumed run re-opens the same W&B run."""
    return _UNSAFE_ID_CHARS.sub("_", f"{experiment_name}-{run_name}")[:_ID_LIMIT]


class WandbTracker:
    def __init__(self, experiment_name: str, experiment_dir: Path) -> None:
        import wandb  # ImportError: `pip install wandb` (or rapidfire_core[tracking])

        self._wandb = wandb
        self.experiment_name = experiment_name
        self.project = os.environ.get(PROJECT_ENV) or experiment_name
        self.dir = Path(os.environ.get(DIR_ENV) or experiment_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mode = os.environ.get("WANDB_MODE", "").strip().lower() or "online"
        if self.mode == "online" and not wandb.login(prompt=False, verify=False):
            warnings.warn(
                f"W&B: no credentials (WANDB_API_KEY or `wandb login`): logging offline to "
                f"{self.dir / 'wandb'}; `wandb sync` uploads it later",
                RuntimeWarning,
                stacklevel=2,
            )
            self.mode = "offline"
        self._runs: dict[str, Any] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # metrics arrive from run threads too

    def _settings(self) -> Any:
        return self._wandb.Settings(
            console="off",
            x_disable_stats=True,
            x_disable_machine_info=True,
            disable_git=True,
            save_code=False,
            silent=True,
        )

    def _open(self, run_name: str) -> Any:
        run = self._runs.get(run_name)
        if run is None:
            run = self._wandb.init(
                project=self.project,
                group=self.experiment_name,
                id=wandb_run_id(self.experiment_name, run_name),
                name=run_name,
                config=self._configs.get(run_name, {}),
                dir=str(self.dir),
                mode=self.mode,
                resume="allow",
                reinit="create_new",
                settings=self._settings(),
            )
            self._runs[run_name] = run
        return run

    def start_run(
        self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
    ) -> str:
        with self._lock:
            self._configs[run_name] = {**dict(params), **{f"tag.{k}": v for k, v in (tags or {}).items()}}
            self._open(run_name)
        return run_name

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        with self._lock:
            self._configs[run_id] = {**self._configs.get(run_id, {}), **dict(params)}
            self._open(run_id).config.update(dict(params), allow_val_change=True)

    def log_metric_steps(self, run_id: str, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        with self._lock:
            run = self._open(run_id)
            for step, metrics in steps:
                values = {
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                if values:
                    run.log(values, step=int(step))

    def _finish(self, run: Any, status: str) -> None:
        run.summary[STATUS_KEY] = status
        run.finish(exit_code=1 if status == "FAILED" else 0)

    def end_run(self, run_id: str, status: str) -> None:
        with self._lock:
            run = self._runs.pop(run_id, None) or self._open_detached(run_id)
            self._finish(run, status)

    def _open_detached(self, run_id: str) -> Any:
        """A run this tracker has no open handle for (ended before): open it to record its status."""
        run = self._open(run_id)
        self._runs.pop(run_id, None)
        return run

    def reopen_run(self, run_id: str) -> None:
        with self._lock:
            self._open(run_id).summary[STATUS_KEY] = "RUNNING"

    def delete_run(self, run_id: str) -> None:
        self.end_run(run_id, "DELETED")

    def flush(self) -> None:
        pass  # W&B's service writes in its own process; finish() drains a run

    def close(self) -> None:
        with self._lock:
            runs, self._runs = list(self._runs.values()), {}
        for run in runs:  # runs still in flight: closed as they are, like the other backends
            run.finish()

    def ui_hint(self) -> str:
        if self.mode in ("offline", "dryrun"):
            return f'W&B project "{self.project}", offline: wandb sync {self.dir / "wandb"}'
        return f'W&B project "{self.project}" (group "{self.experiment_name}")'


__all__ = ["WandbTracker", "wandb_run_id"]
