"""Metrics logged inside a run's turn, written out between turns.

Trainer callbacks run in the run's worker thread, in the training hot path; they only append
to this buffer. The scheduler thread flushes it to the run store and MLflow when the turn
ends, so no database write happens during a step and MLflow is only used from one thread.
"""

from __future__ import annotations

from rapidfire_core.control.run_store import RunStore
from rapidfire_core.tracking.mlflow_tracker import MLflowTracker


class MetricBuffer:
    def __init__(self, store: RunStore, tracker: MLflowTracker) -> None:
        self.store = store
        self.tracker = tracker
        self._mlflow_ids: dict[int, str] = {}
        self._pending: list[tuple[int, int, float | None, int, dict[str, float]]] = []

    def register(self, run_id: int, mlflow_run_id: str) -> None:
        self._mlflow_ids[run_id] = mlflow_run_id

    def record(
        self, run_id: int, step: int, epoch: float | None, chunk: int, metrics: dict[str, float]
    ) -> None:
        self._pending.append((run_id, step, epoch, chunk, metrics))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for run_id, step, epoch, chunk, metrics in pending:
            self.store.log_metrics(run_id, step, metrics, epoch=epoch, chunk=chunk)
            self.tracker.log_metrics(self._mlflow_ids[run_id], {**metrics, "chunk": chunk}, step)
