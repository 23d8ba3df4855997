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
    """

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        with self.lock, self.db:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(schema)

    def close(self) -> None:
        with self.lock:
            self.db.close()
