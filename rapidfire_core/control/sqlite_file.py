"""The SQLite file under an experiment (`runs.db`) that its stores share."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class SQLiteFile:
    """One connection to an experiment's database with its schema applied, behind one lock.

    WAL + synchronous=NORMAL: a metric write is an append, not an fsync of the whole file, and
    readers in other processes (CLI, dashboard, a notebook) proceed while one writer appends.
    The 30 s timeout covers another process holding the write lock. Every access in this
    process takes `lock`; the connection may be used from any thread.

    read_only: an existing file on storage this process cannot write (a read-only mount, another
    user's experiment): opened for reading only, the schema as it is. SQLite reads a WAL file
    only where it can create its `-shm` index; where it cannot, the file is read as immutable
    (nothing can change it there).
    """

    def __init__(self, path: str | Path, schema: str, read_only: bool = False) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        self.read_only = read_only
        if read_only:
            self.db = _open_read_only(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        with self.lock, self.db:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(schema)

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _open_read_only(path: Path) -> sqlite3.Connection:
    uri = path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False, timeout=30)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:  # no -shm index and none can be made: the file cannot change
        db.close()
        db = sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)
    return db
