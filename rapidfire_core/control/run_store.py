"""Durable state of an experiment's runs: one SQLite file under the experiment path.

Tables:
  runs(run_id, name, trainer_type, status, error, knobs_json, mlflow_run_id, parent_run_id,
       warm_start, chunks_done, global_step, created_at, updated_at,
       fingerprint, sweep, interrupted)
  metrics(run_id, step, epoch, chunk, name, value, ts)   -- one row per logged scalar

`fingerprint` identifies the run's config (`scheduler.resume.run_fingerprint`) and `sweep` the
`run_fit` that made it (clones inherit their parent's): a later `run_fit` with the same configs
continues that sweep. `interrupted` is 1 for a run that stopped because its process ended or
run_fit was interrupted (not by a stop command): the next `run_fit` of its sweep trains it on.

`parent_run_id` / `warm_start` are set for runs made by a clone command (see
`rapidfire_core.control.command_store`, whose table lives in the same file). A status change
goes through `update_run`, which refuses a transition the life cycle does not allow
(`run_status.ALLOWED_TRANSITIONS`) in the same transaction that would write it.

Writes come from the engine's threads (metrics are flushed during and between turns); other
threads and processes (a notebook polling results, the CLI, the dashboard) read it at the same
time: SQLite in WAL mode lets readers proceed while one writer appends, every access in this
process takes one lock, and the connection is opened with `check_same_thread=False`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from rapidfire_core.control.run_status import RunStatus, check_transition
from rapidfire_core.control.sqlite_file import SQLiteFile

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
# Columns added after the first release: added to an older runs.db when it is opened.
_ADDED_COLUMNS = {
    "fingerprint": "TEXT",
    "sweep": "INTEGER NOT NULL DEFAULT 1",
    "interrupted": "INTEGER NOT NULL DEFAULT 0",
}


class MetricRecord(NamedTuple):
    run_id: int
    step: int
    epoch: float | None
    chunk: int | None
    metrics: Mapping[str, float]


def stop_orphans(
    db: sqlite3.Connection, reason: str, keep: set[int] | frozenset[int] = frozenset()
) -> list[int]:
    """`RunStore.stop_orphaned_runs` on the connection `db`, in the caller's transaction."""
    in_flight = (RunStatus.NEW.value, RunStatus.ONGOING.value)
    rows = db.execute("SELECT run_id FROM runs WHERE status IN (?, ?)", in_flight).fetchall()
    orphans = [row[0] for row in rows if row[0] not in keep]
    db.executemany(
        "UPDATE runs SET status = ?, error = ?, interrupted = 1, updated_at = ? WHERE run_id = ?",
        [(RunStatus.STOPPED.value, reason, time.time(), run_id) for run_id in orphans],
    )
    return orphans


class RunStore:
    """SQLite-backed store of runs and their logged metrics (thread-safe)."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        """read_only: open an existing file only to read it (`SQLiteFile`): the dashboard's GETs, or
        storage this process cannot write; writes raise."""
        self._file = SQLiteFile(path, _SCHEMA, read_only=read_only)
        self.path, self._lock, self._db = self._file.path, self._file.lock, self._file.db
        if read_only:
            self._read_older_file()
            return
        with self._lock, self._db:
            have = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in have:
                    try:
                        self._db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
                    except sqlite3.OperationalError as exc:  # another process added it meanwhile
                        if "duplicate column" not in str(exc):
                            raise

    def _read_older_file(self) -> None:
        """A file written before `_ADDED_COLUMNS` existed, opened read-only (it cannot be migrated):
        read through a TEMP view named `runs` (it shadows the table) that gives the missing
        columns their defaults. Nothing is written to the file."""
        with self._lock:
            have = {row[1] for row in self._db.execute("PRAGMA main.table_info(runs)")}
            missing = [name for name in _ADDED_COLUMNS if name not in have]
            if have and missing:
                defaults = ", ".join(
                    f"{_ADDED_COLUMNS[name].partition('DEFAULT')[2].strip() or 'NULL'} AS {name}"
                    for name in missing
                )
                self._db.execute(f"CREATE TEMP VIEW runs AS SELECT *, {defaults} FROM main.runs")

    def close(self) -> None:
        self._file.close()

    # ---- runs ---------------------------------------------------------------------------------
    def create_run(
        self,
        name: str,
        trainer_type: str,
        knobs: Mapping[str, Any],
        parent_run_id: int | None = None,
        warm_start: bool = False,
        fingerprint: str | None = None,
        sweep: int = 1,
    ) -> int:
        """A NEW run; parent_run_id / warm_start for a run made by a clone command."""
        now = time.time()
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT INTO runs(name, trainer_type, status, knobs_json, parent_run_id, warm_start,"
                " fingerprint, sweep, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    trainer_type,
                    RunStatus.NEW.value,
                    json.dumps(dict(knobs), default=str),
                    parent_run_id,
                    int(bool(warm_start)),
                    fingerprint,
                    int(sweep),
                    now,
                    now,
                ),
            )
            return int(cur.lastrowid)

    def next_sweep(self) -> int:
        """The sweep number a new run_fit's runs get (1 for the first)."""
        with self._lock:
            row = self._db.execute("SELECT MAX(sweep) FROM runs").fetchone()
        return 1 if row is None or row[0] is None else int(row[0]) + 1

    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set columns of one run. A `status` (RunStatus or its value) must be an allowed
        transition from the stored one, else IllegalTransition and nothing is written."""
        allowed = {"name", "status", "error", "mlflow_run_id", "chunks_done", "global_step", "interrupted"}
        unknown = set(fields) - allowed
        if unknown:
            raise KeyError(f"RunStore.update_run: unknown column(s) {sorted(unknown)}")
        if "status" in fields:
            fields["status"] = RunStatus(fields["status"]).value
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock, self._db:
            if "status" in fields:
                row = self._db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                if row is None:
                    raise KeyError(f"no run with id {run_id}")
                check_transition(run_id, RunStatus(row[0]), RunStatus(fields["status"]))
            self._db.execute(
                f"UPDATE runs SET {cols}, updated_at = ? WHERE run_id = ?",
                (*fields.values(), time.time(), run_id),
            )

    def stop_orphaned_runs(self, reason: str, keep: set[int] | frozenset[int] = frozenset()) -> list[int]:
        """Mark runs left NEW or ONGOING by a process that ended mid-run_fit as STOPPED and
        interrupted (resumable), except the runs in `keep` (this process trains them).

        Called only when no live process owns the experiment, or by its owner.
        Returns the run ids it changed.
        """
        with self._lock, self._db:
            return stop_orphans(self._db, reason, keep)

    def rollback_metrics(self, run_id: int, after_step: int) -> int:
        """Delete run `run_id`'s metric rows logged after step `after_step` (a run continued from
        its checkpoint at that step trains them again). Returns the rows deleted."""
        with self._lock, self._db:
            cur = self._db.execute(
                "DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, int(after_step))
            )
        return cur.rowcount

    def status(self, run_id: int) -> RunStatus:
        with self._lock:
            row = self._db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run with id {run_id}")
        return RunStatus(row[0])

    def runs(self) -> list[dict[str, Any]]:
        """Every run as a dict: run_id, name, trainer_type, status, error, chunks_done,
        global_step, mlflow_run_id, parent_run_id, warm_start (bool), created_at, updated_at,
        knobs (dict), in run_id order."""
        with self._lock:
            cur = self._db.execute(
                "SELECT run_id, name, trainer_type, status, error, chunks_done, global_step, mlflow_run_id,"
                " parent_run_id, warm_start, created_at, updated_at, fingerprint, sweep, interrupted,"
                " knobs_json FROM runs ORDER BY run_id"
            )
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = []
        for row in rows:
            rec = dict(zip(names, row, strict=True))
            rec["knobs"] = json.loads(rec.pop("knobs_json"))
            rec["warm_start"] = bool(rec["warm_start"])
            rec["interrupted"] = bool(rec["interrupted"])
            out.append(rec)
        return out

    def get_run(self, run_id: int) -> dict[str, Any]:
        """One run as in `runs()`; KeyError if there is none."""
        for rec in self.runs():
            if rec["run_id"] == run_id:
                return rec
        raise KeyError(f"no run with id {run_id}")

    def runs_frame(self) -> pd.DataFrame:
        """One row per run: run_id, name, trainer_type, status, error, progress, parent_run_id,
        warm_start, then one column per knob."""
        records = []
        for rec in self.runs():
            knobs = rec.pop("knobs")
            rec.pop("created_at")
            rec.pop("updated_at")
            rec.pop("fingerprint")
            rec.update(knobs)
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

    def metric_rows(self, after: int = 0, limit: int = 50_000) -> list[tuple]:
        """Metric rows logged after row id `after`, oldest first, at most `limit`:
        (row_id, run_id, step, epoch, chunk, name, value, ts). Polling with the last row id
        seen gives each row once (the dashboard's incremental charts)."""
        with self._lock:
            return self._db.execute(
                "SELECT rowid, run_id, step, epoch, chunk, name, value, ts FROM metrics"
                " WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (int(after), int(limit)),
            ).fetchall()

    def last_metric(self, run_id: int, name: str, chunk: int | None = None) -> float | None:
        """The last value of metric `name` that run `run_id` logged (up to chunk `chunk`, if
        given), or None if it logged none."""
        where, params = "run_id = ? AND name = ?", [run_id, name]
        if chunk is not None:
            where, params = where + " AND chunk <= ?", [*params, chunk]
        with self._lock:
            row = self._db.execute(
                f"SELECT value FROM metrics WHERE {where} ORDER BY step DESC, rowid DESC LIMIT 1", params
            ).fetchone()
        return None if row is None else row[0]

    def metric_steps(self, run_id: int) -> list[tuple[int, dict[str, float]]]:
        """Run `run_id`'s metric rows as (step, {name: value, "chunk": chunk}) in logging order
        (the form MLflow is given; used to repair an MLflow run after a crash)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT step, chunk, name, value FROM metrics WHERE run_id = ? ORDER BY rowid", (run_id,)
            ).fetchall()
        return [(step, {name: value, "chunk": chunk}) for step, chunk, name, value in rows]

    def metric_names(self, run_id: int) -> list[str]:
        """The names of the metrics a run has logged (sorted)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT name FROM metrics WHERE run_id = ? ORDER BY name", (run_id,)
            ).fetchall()
        return [row[0] for row in rows]

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
