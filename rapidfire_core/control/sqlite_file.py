"""The SQLite file under an experiment (`runs.db`) that its stores share."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote


class SQLiteFile:
    """One connection to an experiment's database with its schema applied, behind one lock.

    WAL + synchronous=NORMAL: a metric write is an append, not an fsync of the whole file, and
    readers in other processes (CLI, dashboard, a notebook) proceed while one writer appends.
    The 30 s timeout covers another process holding the write lock. Every access in this
    process takes `lock`; the connection may be used from any thread.

    `read_only`: the file must exist; it is opened with SQLite's `mode=ro`, no schema is
    applied and every write raises sqlite3.OperationalError ("attempt to write a readonly
    database"). For readers that must never change what they look at (the dashboard's GETs):
    SQLite may still create the `-wal`/`-shm` index files beside the path, as any reader of a
    WAL database does, but the database itself (or what a symbolic link points to) is not
    written.
    """

    def __init__(self, path: str | Path, schema: str, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.lock = threading.Lock()
        if read_only:
            uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
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
