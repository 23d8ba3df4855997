"""Trackio tracking (local, offline): one Trackio run per engine run, in one Trackio project.

The project is ``$TRACKIO_PROJECT_NAME`` (RapidFire AI's variable) or the experiment's name.
Trackio keeps it in its own local store, ``$TRACKIO_DIR`` (Trackio's default:
``~/.cache/huggingface/trackio``; read by Trackio when it is first imported); ``trackio show
--project NAME`` opens it. Nothing is sent anywhere (no Space, no dataset is given).

Trackio's ``init`` is made per run and its ``Run`` objects are used directly (never the global
``trackio.log``), since many runs log at once in one process; its console banners are kept off
the sweep's output.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

PROJECT_ENV = "TRACKIO_PROJECT_NAME"


class TrackioTracker:
    def __init__(self, experiment_name: str) -> None:
        import trackio  # ImportError: `pip install trackio`

        self._trackio = trackio
        self.project = os.environ.get(PROJECT_ENV) or experiment_name
        self._runs: dict[str, Any] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @property
    def store_dir(self) -> str:
        from trackio.utils import TRACKIO_DIR

        return str(TRACKIO_DIR)

    def _init(self, run_name: str, resume: str) -> Any:
        with contextlib.redirect_stdout(io.StringIO()):  # Trackio prints a banner per init
            return self._trackio.init(
                project=self.project,
                name=run_name,
                config=self._configs.get(run_name),
                resume=resume,
                embed=False,
                auto_log_gpu=False,
                auto_log_cpu=False,
            )

    def start_run(
        self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
    ) -> str:
        # Trackio takes a run's config at init, and the effective params come once the run is
        # built (`log_params`): the Trackio run is made then, or at its first metrics.
        with self._lock:
            self._configs[run_name] = {**dict(params), **{f"tag.{k}": v for k, v in (tags or {}).items()}}
        return run_name

    def _run(self, run_id: str) -> Any:
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = self._init(run_id, resume="allow")
        return run

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        with self._lock:
            self._configs[run_id] = {**self._configs.get(run_id, {}), **dict(params)}
            self._run(run_id)

    def log_metric_steps(self, run_id: str, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        with self._lock:
            run = self._run(run_id)
            for step, metrics in steps:
                values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
                run.log(values, step=int(step))

    def _finish(self, run: Any) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            run.finish()

    def end_run(self, run_id: str, status: str) -> None:
        with self._lock:
            run = self._runs.pop(run_id, None)
            if run is not None:
                self._finish(run)

    def reopen_run(self, run_id: str) -> None:
        with self._lock:
            self._run(run_id)

    def delete_run(self, run_id: str) -> None:
        from trackio.sqlite_storage import SQLiteStorage

        self.end_run(run_id, "DELETED")
        SQLiteStorage.delete_run(self.project, run_id)

    def flush(self) -> None:
        pass  # Trackio's Run writes its queue in its own thread; finish() drains it

    def close(self) -> None:
        with self._lock:
            runs, self._runs = list(self._runs.values()), {}
        for run in runs:
            self._finish(run)

    def ui_hint(self) -> str:
        return f'trackio show --project "{self.project}" (store: {self.store_dir})'


__all__ = ["TrackioTracker"]
