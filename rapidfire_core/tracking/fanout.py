"""Every tracking backend of an experiment behind the one interface the engine calls.

The engine (run controller, metric buffer, experiment) talks to one tracker with MLflowTracker's
methods; `Trackers` forwards each call to every backend it holds (MLflow, TensorBoard, Trackio,
the training log file), each under that backend's own id for the run:

    start_run(name, params, tags) -> run id   # MLflow's run id when MLflow is a backend
                                              # (the run store keeps it), else the run's name
    log_params(run id, params)                # once per run, after it is built (effective values)
    log_metric_steps(run id, [(step, {metric: value})])
    end_run(run id, status) / reopen_run / delete_run / flush / close / ui_hint
    sync_metrics / run_status                 # crash-resume repair: the MLflow primary only

A call for a run id this process did not start (a run a dead process left in flight) goes to
the primary backend alone, under that id. One backend's failure is logged as a warning and
never reaches the others or the training.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)


class Trackers:
    def __init__(self, backends: Mapping[str, Any], primary: str | None) -> None:
        """backends: name -> tracker, in call order; primary: the name whose run id the engine keeps
        (None: the run's name is its id)."""
        if primary is not None and primary not in backends:
            raise ValueError(f"primary tracker {primary!r} is not one of {list(backends)}")
        self.backends = dict(backends)
        self.primary = primary
        self._ids: dict[str, dict[str, str]] = {}  # engine-side run id -> backend name -> its id
        self._lock = threading.Lock()

    # ---- what the engine reads -----------------------------------------------------------------
    @property
    def mlflow(self) -> Any:
        return self.backends.get("mlflow")

    @property
    def experiment_id(self) -> str | None:
        """The MLflow experiment id (None without MLflow)."""
        return None if self.mlflow is None else self.mlflow.experiment_id

    @property
    def tracking_uri(self) -> str | None:
        return None if self.mlflow is None else self.mlflow.tracking_uri

    @property
    def failed_writes(self) -> int:
        return sum(getattr(b, "failed_writes", 0) for b in self.backends.values())

    def ui_hint(self) -> str:
        return "; ".join(f"{name}: {b.ui_hint()}" for name, b in self.backends.items())

    # ---- forwarding ----------------------------------------------------------------------------
    def _call(self, name: str, backend: Any, method: str, *args: Any) -> Any:
        try:
            return getattr(backend, method)(*args)
        except Exception as exc:  # noqa: BLE001 - one backend's trouble must not stop training
            logger.warning("%s tracker: %s failed: %s: %s", name, method, type(exc).__name__, exc)
            return None

    def start_run(
        self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
    ) -> str:
        ids: dict[str, str] = {}
        for name, backend in self.backends.items():
            if name == self.primary:  # its id is the run's: a failure here is the engine's to see
                ids[name] = backend.start_run(run_name, params, tags)
            else:
                backend_id = self._call(name, backend, "start_run", run_name, params, tags)
                if backend_id is not None:
                    ids[name] = backend_id
        run_id = ids[self.primary] if self.primary is not None else run_name
        with self._lock:
            self._ids[run_id] = ids
        return run_id

    def _each(self, run_id: str, method: str, *args: Any) -> None:
        with self._lock:
            ids = self._ids.get(run_id)
        if ids is None:  # started by another process: only the primary knows it
            ids = {self.primary: run_id} if self.primary is not None else {}
        for name, backend_id in ids.items():
            self._call(name, self.backends[name], method, backend_id, *args)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._each(run_id, "log_params", params)

    def log_metric_steps(self, run_id: str, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        self._each(run_id, "log_metric_steps", steps)

    def end_run(self, run_id: str, status: str) -> None:
        self._each(run_id, "end_run", status)

    def reopen_run(self, run_id: str) -> None:
        self._each(run_id, "reopen_run")

    def delete_run(self, run_id: str) -> None:
        self._each(run_id, "delete_run")

    # ---- crash-resume (MLflow only: the other backends are append-only logs) -------------------
    def sync_metrics(
        self, run_id: str, steps: Sequence[tuple[int, Mapping[str, float]]], through_step: int
    ) -> str:
        """MLflowTracker.sync_metrics on the primary MLflow run; the run id to use from now on."""
        if self.primary != "mlflow":
            return run_id
        return self.mlflow.sync_metrics(run_id, steps, through_step)

    def run_status(self, run_id: str) -> str | None:
        """The primary MLflow run's status (None without MLflow as the primary)."""
        return self.mlflow.run_status(run_id) if self.primary == "mlflow" else None

    def flush(self) -> None:
        for name, backend in self.backends.items():
            self._call(name, backend, "flush")

    def close(self) -> None:
        for name, backend in self.backends.items():
            self._call(name, backend, "close")


__all__ = ["Trackers"]
