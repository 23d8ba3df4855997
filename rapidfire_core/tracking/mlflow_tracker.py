"""MLflow tracking with explicit run ids.

Many runs train at once in one process, so the global `mlflow.start_run()` state (and the HF
`MLflowCallback`, which uses it) cannot be used: every call here names its MLflow run id
through an `MlflowClient`.

Metric writes and run ends go, in order, through one background writer thread: a `log_batch`
costs ~15-20 ms on the SQLite store and a network round trip on a server, and the scheduler
would otherwise pay it at every chunk turn of every run. `flush()` waits for the queue; a
failed write is logged as a warning and never stops training.

The default store is `sqlite:///<experiment_path>/mlflow.db`: no server needed (MLflow 3
refuses the plain file store), and `mlflow ui --backend-store-uri ...` opens it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rapidfire_core import layout
from rapidfire_core.tracking.mlflow_template import seed_sqlite_store

_PARAM_VALUE_LIMIT = 6000  # MLflow rejects longer parameter values
_METRICS_PER_BATCH = 1000  # MLflow's limits per log_batch call
_PARAMS_PER_BATCH = 100
_UNSAFE_KEY_CHARS = re.compile(r"[^\w\-. /:]")
logger = logging.getLogger(__name__)


def default_tracking_uri(experiment_path: str | Path) -> str:
    return f"sqlite:///{layout.mlflow_db(Path(experiment_path).resolve())}"


@contextlib.contextmanager
def _store_init_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive lock on `<store>.lock` for a local SQLite store (elsewhere: nothing)."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; starting two processes at once stays unsafe there
        yield
        return
    lock_path = Path(tracking_uri[len("sqlite:///") :] + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _param_items(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    items = []
    for key, value in params.items():
        text = str(value)
        if len(text) > _PARAM_VALUE_LIMIT:
            text = text[: _PARAM_VALUE_LIMIT - 3] + "..."
        items.append((_UNSAFE_KEY_CHARS.sub("_", key), text))
    return items


class MLflowTracker:
    """Logs each engine run as one MLflow run of one MLflow experiment."""

    def __init__(self, experiment_name: str, tracking_uri: str) -> None:
        # MLflow's alembic migrations log at INFO on first use of a store; keep the console clean.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        # The first use of a new SQLite store runs MLflow's schema migrations; two processes that
        # start the same new experiment at once raced there ("duplicate column name: step"), and
        # on creating the experiment. One file lock beside the store makes the start serial.
        with _store_init_lock(tracking_uri):
            seed_sqlite_store(tracking_uri)  # a new store: a copy of the migrated template
            self._client = MlflowClient(tracking_uri=tracking_uri)
            existing = self._client.get_experiment_by_name(experiment_name)
            self.experiment_id = (
                existing.experiment_id if existing else self._client.create_experiment(experiment_name)
            )
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rapidfire-mlflow")
        self._queued: list[Future] = []
        self._queue_lock = threading.Lock()  # metrics are queued from run threads too
        self.failed_writes = 0

    def _enqueue(self, write, *args) -> None:
        with self._queue_lock:
            self._queued = [f for f in self._queued if not f.done()]
            self._queued.append(self._writer.submit(self._guarded, write, *args))

    def _guarded(self, write, *args) -> None:
        try:
            write(*args)
        except Exception as exc:  # noqa: BLE001 - tracking trouble must not stop training
            self.failed_writes += 1
            logger.warning("MLflow write to %s failed: %s: %s", self.tracking_uri, type(exc).__name__, exc)

    def flush(self) -> None:
        """Wait until every queued write has reached the store."""
        with self._queue_lock:
            queued, self._queued = self._queued, []
        for future in queued:
            future.result()

    def close(self) -> None:
        self.flush()
        self._writer.shutdown(wait=True)

    def start_run(
        self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
    ) -> str:
        from mlflow.entities import RunTag

        run = self._client.create_run(self.experiment_id, run_name=run_name)
        run_id = run.info.run_id
        self._client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
        self.log_params(run_id, params)
        return run_id

    def log_params(self, mlflow_run_id: str, params: Mapping[str, Any]) -> None:
        """Log params now (MLflow params are write-once: each key once per run)."""
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in _param_items(params)]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self._client.log_batch(mlflow_run_id, params=items[start : start + _PARAMS_PER_BATCH])

    def log_metric_steps(self, mlflow_run_id: str, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Queue many (step, metrics) pairs of one run; written in as few `log_batch` calls as allowed."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(key=_UNSAFE_KEY_CHARS.sub("_", k), value=float(v), timestamp=now, step=int(step))
            for step, metrics in steps
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        for start in range(0, len(batch), _METRICS_PER_BATCH):
            self._enqueue(self._write_metrics, mlflow_run_id, batch[start : start + _METRICS_PER_BATCH])

    def _write_metrics(self, mlflow_run_id: str, batch: list) -> None:
        self._client.log_batch(mlflow_run_id, metrics=batch)

    def sync_metrics(
        self, mlflow_run_id: str, steps: Sequence[tuple[int, Mapping[str, float]]], through_step: int
    ) -> str:
        """Make the MLflow run hold exactly the (metric, step) pairs of `steps`, the run store's
        durable rows of a run continued from its checkpoint at `through_step` after a crash.
        Pairs it lacks are logged. If it holds steps past `through_step` (they were covered by a
        newer checkpoint that turned out torn), its history cannot be cut by step, so it is
        rewritten: a new MLflow run with the same name, params and tags gets `steps`, and the old
        one goes to MLflow's trash. Returns the MLflow run id to use from now on. Synchronous."""
        from mlflow.entities import Metric

        self.flush()
        wanted: dict[str, dict[int, float]] = {}
        for step, metrics in steps:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    wanted.setdefault(_UNSAFE_KEY_CHARS.sub("_", k), {})[int(step)] = float(v)
        now = int(time.time() * 1000)
        try:
            keys = self._client.get_run(mlflow_run_id).data.metrics  # {key: latest value}
            have = {
                key: {m.step for m in self._client.get_metric_history(mlflow_run_id, key)} for key in keys
            }
            if any(step > through_step for steps_of in have.values() for step in steps_of):
                mlflow_run_id, have = self._rewrite(mlflow_run_id), {}
            missing = [
                Metric(key, v, now, step)
                for key, by_step in wanted.items()
                for step, v in by_step.items()
                if step not in have.get(key, ())
            ]
            for start in range(0, len(missing), _METRICS_PER_BATCH):
                self._client.log_batch(mlflow_run_id, metrics=missing[start : start + _METRICS_PER_BATCH])
        except Exception as exc:  # noqa: BLE001 - tracking trouble must not stop training
            self.failed_writes += 1
            logger.warning("MLflow repair of run %s failed: %s: %s", mlflow_run_id, type(exc).__name__, exc)
        return mlflow_run_id

    def _rewrite(self, mlflow_run_id: str) -> str:
        """A fresh MLflow run with `mlflow_run_id`'s name, params and tags; the old one is deleted."""
        from mlflow.entities import Param

        old = self._client.get_run(mlflow_run_id)
        new_id = self._client.create_run(
            self.experiment_id, run_name=old.info.run_name, tags=old.data.tags
        ).info.run_id
        params = [Param(k, v) for k, v in old.data.params.items()]
        for start in range(0, len(params), _PARAMS_PER_BATCH):
            self._client.log_batch(new_id, params=params[start : start + _PARAMS_PER_BATCH])
        self._client.delete_run(mlflow_run_id)
        return new_id

    def run_status(self, mlflow_run_id: str) -> str | None:
        """The MLflow run's status (RUNNING, FINISHED, FAILED, KILLED), None if it cannot be read."""
        self.flush()
        try:
            return self._client.get_run(mlflow_run_id).info.status
        except Exception as exc:  # noqa: BLE001 - tracking trouble must not stop training
            logger.warning("MLflow run %s could not be read: %s: %s", mlflow_run_id, type(exc).__name__, exc)
            return None

    def end_run(self, mlflow_run_id: str, status: str) -> None:
        """Queue the end of a run (after its queued metrics). status: 'FINISHED', 'FAILED' or 'KILLED'
        (a stopped run, RapidFire AI's convention)."""
        self._enqueue(self._client.set_terminated, mlflow_run_id, status)

    def reopen_run(self, mlflow_run_id: str) -> None:
        """Queue a resumed run's return to RUNNING (its metrics go on in the same MLflow run)."""
        self._enqueue(self._client.update_run, mlflow_run_id, "RUNNING")

    def delete_run(self, mlflow_run_id: str) -> None:
        """Queue the deletion of a run (MLflow keeps it restorable in its trash)."""
        self._enqueue(self._client.delete_run, mlflow_run_id)

    def ui_hint(self) -> str:
        if self.tracking_uri.startswith("sqlite:"):
            return f"mlflow ui --backend-store-uri {self.tracking_uri}"
        return f"open {self.tracking_uri} (experiment id {self.experiment_id})"
