"""Durable state of an experiment's runs: one SQLite file under the experiment path.

Tables:
  runs(run_id, name, trainer_type, status, error, knobs_json, mlflow_run_id, parent_run_id,
       warm_start, chunks_done, global_step, created_at, updated_at)
  metrics(run_id, step, epoch, chunk, name, value, ts)   -- one row per logged scalar

`parent_run_id` / `warm_start` are filled by clone operations (interactive control); they are
here so that adding those operations does not change the schema. Writes come from the scheduler
thread (metrics are buffered during a turn and written between turns), but the store may be
read from any thread (a notebook polling results), so every access takes one lock and the
connection is opened with `check_same_thread=False`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from rapidfire_core.control.run_status import RunStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    trainer_type TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    knobs_json TEXT NOT NULL,
    mlflow_run_id TEXT,
    parent_run_id INTEGER,
    warm_start INTEGER NOT NULL DEFAULT 0,
    chunks_done INTEGER NOT NULL DEFAULT 0,
    global_step INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    epoch REAL,
    chunk INTEGER,
    name TEXT NOT NULL,
    value REAL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics(run_id, step);
"""


class MetricRecord(NamedTuple):
    run_id: int
    step: int
    epoch: float | None
    chunk: int | None
    metrics: Mapping[str, float]


class RunStore:
    """SQLite-backed store of runs and their logged metrics (thread-safe)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        with self._lock, self._db:
            # WAL + NORMAL: a metric write is an append, not an fsync of the whole file.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- runs ---------------------------------------------------------------------------------
    def create_run(self, name: str, trainer_type: str, knobs: Mapping[str, Any]) -> int:
        now = time.time()
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT INTO runs(name, trainer_type, status, knobs_json, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, trainer_type, RunStatus.NEW.value, json.dumps(dict(knobs), default=str), now, now),
            )
            return int(cur.lastrowid)

    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set columns of one run (status may be a RunStatus)."""
        allowed = {"name", "status", "error", "mlflow_run_id", "chunks_done", "global_step"}
        unknown = set(fields) - allowed
        if unknown:
            raise KeyError(f"RunStore.update_run: unknown column(s) {sorted(unknown)}")
        if isinstance(fields.get("status"), RunStatus):
            fields["status"] = fields["status"].value
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock, self._db:
            self._db.execute(
                f"UPDATE runs SET {cols}, updated_at = ? WHERE run_id = ?",
                (*fields.values(), time.time(), run_id),
            )

    def stop_orphaned_runs(self, reason: str) -> list[int]:
        """Mark runs left NEW or ONGOING by a process that ended mid-run_fit as STOPPED.

        Called when an experiment is (re)opened: no run of this store is in flight then.
        Returns the run ids it changed.
        """
        in_flight = (RunStatus.NEW.value, RunStatus.ONGOING.value)
        with self._lock, self._db:
            rows = self._db.execute("SELECT run_id FROM runs WHERE status IN (?, ?)", in_flight).fetchall()
            self._db.execute(
                "UPDATE runs SET status = ?, error = ?, updated_at = ? WHERE status IN (?, ?)",
                (RunStatus.STOPPED.value, reason, time.time(), *in_flight),
            )
        return [row[0] for row in rows]

    def status(self, run_id: int) -> RunStatus:
        with self._lock:
            row = self._db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run with id {run_id}")
        return RunStatus(row[0])

    def runs_frame(self) -> pd.DataFrame:
        """One row per run: run_id, name, trainer_type, status, error, progress, then one column per knob."""
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, name, trainer_type, status, error, chunks_done, global_step, mlflow_run_id,"
                " knobs_json FROM runs ORDER BY run_id"
            ).fetchall()
        records = []
        for run_id, name, ttype, status, error, chunks, step, mlflow_id, knobs_json in rows:
            rec = {
                "run_id": run_id,
                "name": name,
                "trainer_type": ttype,
                "status": status,
                "error": error,
                "chunks_done": chunks,
                "global_step": step,
                "mlflow_run_id": mlflow_id,
            }
            rec.update(json.loads(knobs_json))
            records.append(rec)
        return pd.DataFrame.from_records(records)

    # ---- metrics ------------------------------------------------------------------------------
    def log_metric_records(self, records: Sequence[MetricRecord]) -> None:
        """Write many (run, step) metric dicts in one transaction; non-numeric values are skipped."""
        now = time.time()
        rows = [
            (rec.run_id, int(rec.step), rec.epoch, rec.chunk, name, float(value), now)
            for rec in records
            for name, value in rec.metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        if rows:
            with self._lock, self._db:
                self._db.executemany(
                    "INSERT INTO metrics(run_id, step, epoch, chunk, name, value, ts) VALUES (?,?,?,?,?,?,?)",
                    rows,
                )

    def results_frame(self) -> pd.DataFrame:
        """One row per (run_id, step): columns run_id, step, epoch, chunk, then every metric name.

        A metric not logged at a step is NaN. When a metric was logged twice at one step (e.g. a
        user eval and the chunk-end eval) the last value wins.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, step, epoch, chunk, name, value FROM metrics ORDER BY run_id, step, ts, rowid"
            ).fetchall()
        if not rows:
            return pd.DataFrame(columns=["run_id", "step", "epoch", "chunk"])
        long = pd.DataFrame(rows, columns=["run_id", "step", "epoch", "chunk", "name", "value"])
        wide = long.pivot_table(index=["run_id", "step"], columns="name", values="value", aggfunc="last")
        wide.columns.name = None
        meta = long.groupby(["run_id", "step"])[["epoch", "chunk"]].max()
        return meta.join(wide).reset_index().sort_values(["run_id", "step"], ignore_index=True)
