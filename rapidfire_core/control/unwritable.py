"""A run store that cannot be written: the error that names the disk, and finding it in a chain.

When `runs.db` refuses a write because its disk is full (SQLITE_FULL), the file system went
read-only (SQLITE_READONLY) or the write failed at the device (SQLITE_IOERR), nothing more of
the experiment can be recorded: not a metric, not a run's status, not a command's outcome.
`SQLiteFile` raises `StoreUnwritable` then, and the run controller stops every run without
writing (their last checkpoints and store rows are intact, so a later `run_fit` with the same
arguments continues each of them) and raises it as the one message the user sees.

A checkpoint that cannot be written is a different matter: that run fails alone
(`control.checkpoints.CheckpointError`), the store records it and the others go on.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

# SQLite's own words for the failures a disk causes (sqlite3.OperationalError has no errno).
_DISK_ERRORS = ("database or disk is full", "disk i/o error", "attempt to write a readonly database")


class StoreUnwritable(sqlite3.OperationalError):
    """runs.db cannot be written (disk full, read-only, I/O error); the message names the file
    system and what is free on it."""

    def training_stopped(self) -> StoreUnwritable:
        """The message run_fit ends with: this one, and how every run continues."""
        return StoreUnwritable(
            f"{self}. Training stopped; every run keeps its last checkpoint and continues from it: make "
            "room (or make the disk writable), then call run_fit again with the same arguments"
        )


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def disk_report(path: Path) -> str:
    """'the file system at /mnt/x (0 bytes free of 20.0 MiB)' for the disk holding `path`."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return f"the file system holding {path.parent}"
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    return f"the file system at {_mount_point(path.parent)} ({_size(free)} free of {_size(total)})"


def as_unwritable(exc: sqlite3.Error, path: Path) -> sqlite3.Error:
    """`exc` as a StoreUnwritable naming the disk if it is a disk's failure, else `exc`."""
    if isinstance(exc, StoreUnwritable) or not isinstance(exc, sqlite3.OperationalError):
        return exc
    if not any(words in str(exc).lower() for words in _DISK_ERRORS):
        return exc
    return StoreUnwritable(f"the run store {path} cannot be written ({exc}): {disk_report(path)}")


def unwritable_cause(exc: BaseException | None) -> StoreUnwritable | None:
    """The StoreUnwritable that `exc` is or was raised from or while handling, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StoreUnwritable):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
