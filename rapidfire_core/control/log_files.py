"""The experiment's log files, as RapidFire AI's ``Experiment.get_log_file_path(log_type)`` names them.

    <experiment>/logs/rapidfire.log    log_type "main" or "experiment" (or None): what the
                                       experiment says (printed or not: verbose=False only
                                       silences the console), every finished turn
                                       ("[epoch 1 chunk 2/4] run 3 ... step 8/16 loss=..."),
                                       command outcomes and run failures
    <experiment>/logs/training.log     log_type "training": each run's start (with its
                                       params), every metric row it logs (step, chunk, values),
                                       its end; and the WARNING+ records of transformers, TRL
                                       and peft while the experiment is open

Lines are appended as they happen (a ``tail -f`` follows a sweep) and flushed at once; a
reopened experiment appends to the same files. Each line starts with a UTC timestamp.

``TrainingLog`` is a tracker (the interface of ``tracking.fanout.Trackers``' backends), so the
training log receives exactly what MLflow receives, when the metric buffer flushes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rapidfire_core import layout

LOG_DIR_NAME = layout.LOG_DIR_NAME
MAIN_LOG_NAME = "rapidfire.log"
TRAINING_LOG_NAME = "training.log"
LOG_TYPES = {"main": MAIN_LOG_NAME, "experiment": MAIN_LOG_NAME, "training": TRAINING_LOG_NAME}
LIBRARY_LOGGERS = ("transformers", "trl", "peft")


def log_file_path(experiment_dir: Path, log_type: str | None = None) -> Path:
    """The file of `log_type` ("main", "experiment", "training"; None: "main"); ValueError otherwise."""
    key = "main" if log_type is None else str(log_type).lower()
    if key not in LOG_TYPES:
        raise ValueError(
            f"log_type={log_type!r} is not a log of this experiment: use one of {sorted(LOG_TYPES)}"
        )
    return layout.logs_dir(experiment_dir) / LOG_TYPES[key]


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


class _AppendOnlyFile:
    """One log file, appended to line by line from any thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the experiment's life
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            if self._file.closed:
                return
            for line in text.splitlines() or [""]:
                self._file.write(f"{_stamp()} {line}\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _LibraryRecords(logging.Handler):
    def __init__(self, sink: _AppendOnlyFile) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.write(f"{record.levelname} {record.name}: {record.getMessage()}")


class ExperimentLogs:
    """The two log files of one open experiment (module docstring)."""

    def __init__(self, experiment_dir: Path) -> None:
        self.experiment_dir = experiment_dir
        self.main = _AppendOnlyFile(log_file_path(experiment_dir, "main"))
        self.training = _AppendOnlyFile(log_file_path(experiment_dir, "training"))
        self._handler = _LibraryRecords(self.training)
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).addHandler(self._handler)

    def path(self, log_type: str | None = None) -> Path:
        return log_file_path(self.experiment_dir, log_type)

    def close(self) -> None:
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).removeHandler(self._handler)
        self.main.close()
        self.training.close()


class TrainingLog:
    """A tracker writing each run's start, metric rows and end to the training log."""

    def __init__(self, sink: _AppendOnlyFile) -> None:
        self.sink = sink

    def start_run(
        self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
    ) -> str:
        self.sink.write(f"{run_name} started")
        return run_name

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        self.sink.write(f"{run_id} params: {shown}")

    def log_metric_steps(self, run_id: str, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        for step, metrics in steps:
            values = " ".join(f"{k}={v:.6g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            self.sink.write(f"{run_id} step {step}: {values}")

    def end_run(self, run_id: str, status: str) -> None:
        self.sink.write(f"{run_id} ended: {status}")

    def reopen_run(self, run_id: str) -> None:
        self.sink.write(f"{run_id} resumed")

    def delete_run(self, run_id: str) -> None:
        self.sink.write(f"{run_id} deleted")

    def flush(self) -> None:
        pass  # every line is flushed as it is written

    def close(self) -> None:
        pass  # the file belongs to ExperimentLogs

    def ui_hint(self) -> str:
        return str(self.sink.path)


__all__ = ["LOG_TYPES", "ExperimentLogs", "TrainingLog", "log_file_path"]
