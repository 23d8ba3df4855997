"""TensorBoard tracking: one run directory of event files per engine run.

    <log_dir>/run-1/events.out.tfevents...    scalars: every metric the run logs, at its step
    <log_dir>/run-2/...                       text: "params" (a table), "status" (its ends)

`tensorboard --logdir <log_dir>` shows every run of the experiment side by side. Written with
the `tensorboard` package's writer (`torch.utils.tensorboard.SummaryWriter`); a resumed run
appends a new event file to its directory. A deleted run's directory is kept, with the status
"DELETED" (as MLflow keeps a deleted run restorable).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _params_table(params: Mapping[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in params.items())
    return "| param | value |\n|---|---|\n" + rows


class TensorBoardTracker:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError names the `tensorboard` package

        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writers: dict[str, Any] = {}
        self._lock = threading.Lock()  # metrics arrive from run threads too

    def _open(self, run_id: str) -> Any:
        writer = self._writers.get(run_id)
        if writer is None:
            writer = self._writer_class(log_dir=str(self.log_dir / run_id), flush_secs=5)
            self._writers[run_id] = writer
        return writer

    def run_dir(self, run_id: str) -> Path:
        return self.log_dir / run_id

    def start_run(
        self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
    ) -> str:
        with self._lock:
            writer = self._open(run_name)
            if tags:
                writer.add_text("tags", _params_table(tags))
        return run_name

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        with self._lock:
            self._open(run_id).add_text("params", _params_table(params))

    def log_metric_steps(self, run_id: str, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        with self._lock:
            writer = self._open(run_id)
            for step, metrics in steps:
                for key, value in metrics.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        writer.add_scalar(key, float(value), global_step=int(step))

    def _close_run(self, run_id: str, status: str) -> None:
        with self._lock:
            writer = self._open(run_id)
            writer.add_text("status", status)
            writer.close()
            self._writers.pop(run_id, None)

    def end_run(self, run_id: str, status: str) -> None:
        self._close_run(run_id, status)

    def reopen_run(self, run_id: str) -> None:
        with self._lock:
            self._open(run_id).add_text("status", "RUNNING")

    def delete_run(self, run_id: str) -> None:
        self._close_run(run_id, "DELETED")

    def flush(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                writer.flush()

    def close(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()

    def ui_hint(self) -> str:
        return f"tensorboard --logdir {self.log_dir}"


__all__ = ["TensorBoardTracker"]
