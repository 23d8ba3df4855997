"""The SQLite file under an experiment (`runs.db`) that its stores share."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from rapidfire_core.control.faults import fault_active
from rapidfire_core.control.unwritable import as_unwritable


class _Connection(sqlite3.Connection):
    """A connection whose disk failures (full, read-only, I/O) raise `StoreUnwritable` naming
    the file system (control.unwritable); every other error is raised as it is."""

    store_path: Path

    def execute(self, *args):
        try:
            return super().execute(*args)
        except sqlite3.Error as exc:
            raise as_unwritable(exc, self.store_path) from None

    def executemany(self, *args):
        try:
            return super().executemany(*args)
        except sqlite3.Error as exc:
            raise as_unwritable(exc, self.store_path) from None

    def executescript(self, *args):
        try:
            return super().executescript(*args)
        except sqlite3.Error as exc:
            raise as_unwritable(exc, self.store_path) from None

    def commit(self) -> None:
        self._refuse_if_disk_full()
        try:
            super().commit()
        except sqlite3.Error as exc:
            raise as_unwritable(exc, self.store_path) from None

    def __exit__(self, kind, value, tb):
        if kind is None:
            try:
                self._refuse_if_disk_full()
            except sqlite3.Error:
                self.rollback()
                raise
        try:
            return super().__exit__(kind, value, tb)
        except sqlite3.Error as exc:
            raise as_unwritable(exc, self.store_path) from None

    def _refuse_if_disk_full(self) -> None:
        # The `store_full` fault (control.faults): what SQLite says when a write meets a full disk.
        if self.in_transaction and fault_active("store_full"):
            raise as_unwritable(sqlite3.OperationalError("database or disk is full"), self.store_path)


class SQLiteFile:
    """One connection to an experiment's database with its schema applied, behind one lock.

    WAL + synchronous=NORMAL: a metric write is an append, not an fsync of the whole file, and
    readers in other processes (CLI, dashboard, a notebook) proceed while one writer appends.
    The 30 s timeout covers another process holding the write lock. Every access in this
    process takes `lock`; the connection may be used from any thread. A write its disk
    refuses raises `control.unwritable.StoreUnwritable` (a sqlite3.OperationalError).

    read_only: the file must exist; it is opened with SQLite's `mode=ro`, no schema is applied
    and every write raises sqlite3.OperationalError ("attempt to write a readonly database").
    For readers that must never change what they look at (the dashboard's GETs) and for storage
    this process cannot write (a read-only mount, another user's experiment). SQLite reads a WAL
    file only where it can create its `-shm` index; where it cannot, the file is read as
    immutable (nothing can change it there).
    """

    def __init__(self, path: str | Path, schema: str, read_only: bool = False) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        self.read_only = read_only
        if read_only:
            self.db = _open_read_only(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, factory=_Connection)
        self.db.store_path = self.path
        with self.lock, self.db:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(schema)

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _open_read_only(path: Path) -> _Connection:
    uri = path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False, timeout=30, factory=_Connection)
    db.store_path = path
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:  # no -shm index and none can be made: the file cannot change
        db.close()
        db = sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False, factory=_Connection)
        db.store_path = path
    return db
