"""Metrics logged inside a run's turn, written out in batches.

Trainer callbacks run in the run's worker thread, in the training hot path; they append to
this buffer, which is written to the run store and MLflow (one store transaction, and MLflow
`log_batch` calls queued to its background writer) when a turn ends and, during a turn, at
most every `FLUSH_SECONDS` on the next record: so the dashboard sees a metric within about a
second of its step, and a long chunk costs one flush per second instead of one per step (a
`log_batch` to the SQLite store costs ~14 ms; one call per logged step would add ~1 s per 64
steps).

MLflow sees a step once it is durable. The run store gets every record at each flush (the
dashboard and the automatic searches read it live); MLflow gets a run's records only when
`release(run_id, through_step)` says a checkpoint covers them (the controller calls it after
each chunk checkpoint, and `release_all` when the run ends). After a crash, the records past a
run's last checkpoint are rolled back in the run store and trained again: MLflow, whose metric
history cannot be edited by step, never saw them, so it holds each step once.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from rapidfire_core.control.faults import fault_point
from rapidfire_core.control.run_store import MetricRecord, RunStore
from rapidfire_core.tracking.mlflow_tracker import MLflowTracker

FLUSH_SECONDS = 1.0


class MetricBuffer:
    def __init__(self, store: RunStore, tracker: MLflowTracker, flush_seconds: float = FLUSH_SECONDS) -> None:
        self.store = store
        self.tracker = tracker
        self.flush_seconds = flush_seconds
        self._mlflow_ids: dict[int, str] = {}
        self._pending: list[MetricRecord] = []
        self._held: dict[int, list[MetricRecord]] = defaultdict(list)  # in the run store, not yet in MLflow
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()

    def register(self, run_id: int, mlflow_run_id: str) -> None:
        self._mlflow_ids[run_id] = mlflow_run_id

    def record(
        self, run_id: int, step: int, epoch: float | None, chunk: int, metrics: dict[str, float]
    ) -> None:
        with self._lock:
            self._pending.append(MetricRecord(run_id, step, epoch, chunk, metrics))
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._last_flush = time.monotonic()
            if not pending:
                return
            self.store.log_metric_records(pending)
            for rec in pending:
                self._held[rec.run_id].append(rec)
        fault_point("metric_flush")

    def release(self, run_id: int, through_step: int | None = None) -> None:
        """Send run `run_id`'s flushed records up to `through_step` (None: all) to MLflow."""
        with self._lock:
            held = self._held.pop(run_id, [])
            if through_step is not None:
                later = [rec for rec in held if rec.step > through_step]
                held = [rec for rec in held if rec.step <= through_step]
                if later:
                    self._held[run_id] = later
        if held and run_id in self._mlflow_ids:
            steps = [(rec.step, {**rec.metrics, "chunk": rec.chunk}) for rec in held]
            self.tracker.log_metric_steps(self._mlflow_ids[run_id], steps)

    def release_all(self, run_id: int) -> None:
        """The run has ended (completed, failed): MLflow gets everything it logged."""
        self.flush()
        self.release(run_id)

    def discard(self, run_id: int) -> None:
        """Drop what MLflow has not seen of a run that will train those steps again (interrupted)."""
        with self._lock:
            self._held.pop(run_id, None)
