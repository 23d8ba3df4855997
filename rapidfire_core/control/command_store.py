"""Interactive-control commands (IC Ops) as durable rows beside the runs, in `runs.db`.

    commands(command_id, op, run_id, payload_json, source, status, created_at, applied_at,
             result_json, error)
    controllers(experiment_path, pid, host, started_at, heartbeat_at)   -- who applies them

Any process may submit a command (the notebook, `rapidfire stop ...`, the dashboard, an
automatic search); the process running the experiment's training (its run controller) applies
the pending ones in `command_id` order, each once:

    pending --claim--> applying --> applied (result)  |  failed (error)

`claim` is one conditional UPDATE, so two appliers can never both take a command. Ops:

    stop    {}                                        park the run where it is (STOPPED)
    resume  {}                                        a STOPPED run continues exactly there
    delete  {}                                        end it, free its state (DELETED)
    clone   {"changes": {knob: value}, "warm_start": bool}   a new run; result {"run_id": N}

The `controllers` row is the experiment's owner lease (`control.owner_lease`): the one process
that trains the experiment holds it and refreshes its heartbeat every few seconds, so a
submitter can tell whether anyone will apply its command soon (`controller_alive`), and a
second trainer is refused (`take_lease`).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rapidfire_core.control.sqlite_file import SQLiteFile

T = TypeVar("T")

OPS = ("stop", "resume", "delete", "clone")
SOURCES = ("python", "cli", "dashboard", "automl")
PENDING, APPLYING, APPLIED, FAILED = "pending", "applying", "applied", "failed"
HEARTBEAT_SECONDS = 2.0
# A controller whose heartbeat is older than this is taken to be gone.
HEARTBEAT_STALE_SECONDS = 15.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    command_id INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    payload_json TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    applied_at REAL,
    result_json TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS commands_by_status ON commands(status, command_id);
CREATE TABLE IF NOT EXISTS controllers (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
"""


class CommandError(ValueError):
    """A command that cannot even be submitted (unknown op, malformed payload)."""


@dataclass(frozen=True)
class Command:
    command_id: int
    op: str
    run_id: int
    payload: dict[str, Any]
    source: str
    status: str
    created_at: float
    applied_at: float | None
    result: dict[str, Any] | None
    error: str | None

    @property
    def done(self) -> bool:
        return self.status in (APPLIED, FAILED)

    @property
    def new_run_id(self) -> int | None:
        """The run a clone created, once applied."""
        return (self.result or {}).get("run_id")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_command(op: str, run_id: Any, payload: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """The payload as stored; CommandError naming what is wrong with the request itself.
    (Whether the op makes sense for the run is decided when it is applied.)"""
    if op not in OPS:
        raise CommandError(f"unknown op {op!r}: expected one of {', '.join(OPS)}")
    if source not in SOURCES:
        raise CommandError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")
    if isinstance(run_id, bool) or not isinstance(run_id, int):
        raise CommandError(f"run_id must be an int, got {run_id!r}")
    payload = dict(payload or {})
    if op == "clone":
        changes = payload.setdefault("changes", {})
        if not isinstance(changes, dict) or not all(isinstance(k, str) for k in changes):
            raise CommandError(f"clone: changes must be a dict of knob name -> value, got {changes!r}")
        warm = payload.setdefault("warm_start", False)
        if not isinstance(warm, bool):
            raise CommandError(f"clone: warm_start must be true or false, got {warm!r}")
        unknown = set(payload) - {"changes", "warm_start"}
    else:
        unknown = set(payload)
    if unknown:
        raise CommandError(f"{op}: unexpected payload field(s) {sorted(unknown)}")
    try:
        json.dumps(payload)
    except TypeError as exc:
        raise CommandError(f"{op}: the payload must be JSON (numbers, strings, lists): {exc}") from None
    except RecursionError:
        raise CommandError(f"{op}: the payload is nested too deeply") from None
    bad = _non_unicode_text(payload)
    if bad is not None:
        raise CommandError(
            f"{op}: {bad} is not valid Unicode text (a byte that is not UTF-8, or a lone surrogate"
            " such as \\ud800): write knob names and values as UTF-8 text"
        )
    return payload


def _non_unicode_text(value: Any, where: str = "") -> str | None:
    """Where in `value` a string cannot be encoded as UTF-8 (a surrogate: from a non-UTF-8 byte
    on the command line, or a JSON escape such as "\\ud800"), as an escaped description; None
    if every string can. Such a string would reach the run store, MLflow and the dashboard's
    replies, none of which can write it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where or 'a value'} {ascii(value)}".strip()
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            bad = _non_unicode_text(key, "the name") if isinstance(key, str) else None
            bad = bad or _non_unicode_text(item, f"the value of {ascii(key)}")
            if bad is not None:
                return bad
    elif isinstance(value, (list, tuple)):
        for item in value:
            bad = _non_unicode_text(item, where)
            if bad is not None:
                return bad
    return None


def printable(text: str) -> str:
    """`text` with whatever UTF-8 cannot encode (lone surrogates) escaped as \\udcxx, so that an
    error message quoting a user's bad input can be stored and shown."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class CommandStore:
    """The commands table of one experiment's `runs.db` (thread-safe; any process)."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        """read_only: open an existing file only to read it (`SQLiteFile`): the dashboard's GETs, or
        storage this process cannot write; writes raise."""
        self._file = SQLiteFile(path, _SCHEMA, read_only=read_only)
        self.path, self._lock, self._db = self._file.path, self._file.lock, self._file.db
        # Set by submit() in this process: the controller's per-step probe is then free of I/O.
        self.submitted = threading.Event()

    def close(self) -> None:
        self._file.close()

    # ---- submitting and reading ----------------------------------------------------------------
    def submit(
        self, op: str, run_id: int, payload: dict[str, Any] | None = None, source: str = "python"
    ) -> Command:
        payload = check_command(op, run_id, payload, source)
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT INTO commands(op, run_id, payload_json, source, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (op, run_id, json.dumps(payload), source, PENDING, time.time()),
            )
            command_id = int(cur.lastrowid)
        self.submitted.set()
        return self.get(command_id)

    def get(self, command_id: int) -> Command:
        """The command; KeyError if there is none (also for an id no SQLite integer can hold)."""
        if not -(2**63) <= command_id < 2**63:
            raise KeyError(f"no command with id {command_id}")
        rows = self._select("WHERE command_id = ?", (command_id,))
        if not rows:
            raise KeyError(f"no command with id {command_id}")
        return rows[0]

    def all(self) -> list[Command]:
        """Every command, oldest first (the history the dashboard shows)."""
        return self._select("", ())

    def pending(self) -> list[Command]:
        return self._select("WHERE status = ?", (PENDING,))

    def has_pending(self) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM commands WHERE status = ? LIMIT 1", (PENDING,)).fetchone()
        return row is not None

    def wait(self, command_id: int, timeout: float | None = None, poll: float = 0.1) -> Command:
        """Block until the command is applied or failed; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            command = self.get(command_id)
            if command.done:
                return command
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"command {command_id} ({command.op}) is still {command.status}")
            time.sleep(poll)

    def _select(self, where: str, params: tuple) -> list[Command]:
        with self._lock:
            rows = self._db.execute(
                "SELECT command_id, op, run_id, payload_json, source, status, created_at, applied_at,"
                f" result_json, error FROM commands {where} ORDER BY command_id",
                params,
            ).fetchall()
        return [
            Command(cid, op, run, json.loads(payload), src, status, created, applied,
                    json.loads(result) if result else None, error)
            for cid, op, run, payload, src, status, created, applied, result, error in rows
        ]  # fmt: skip

    # ---- applying (the controller) ---------------------------------------------------------------
    def claim(self, command_id: int) -> bool:
        """Take a pending command for applying; False if another applier took it first."""
        with self._lock, self._db:
            cur = self._db.execute(
                "UPDATE commands SET status = ? WHERE command_id = ? AND status = ?",
                (APPLYING, command_id, PENDING),
            )
        return cur.rowcount == 1

    def finish(
        self, command_id: int, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> Command:
        """Record the outcome of a claimed command: applied (with result) or failed (error)."""
        status = FAILED if error is not None else APPLIED
        # An error may quote the command's own bad input; it must be storable whatever it holds.
        error = printable(error) if error is not None else None
        with self._lock, self._db:
            self._db.execute(
                "UPDATE commands SET status = ?, applied_at = ?, result_json = ?, error = ?"
                " WHERE command_id = ?",
                (status, time.time(), json.dumps(result) if result is not None else None, error, command_id),
            )
        return self.get(command_id)

    def fail_unfinished(self, reason: str) -> list[int]:
        """Commands left `applying` by an owner that died: failed with `reason` (at most once)."""
        with self._lock, self._db:
            return fail_applying(self._db, reason)

    # ---- controller liveness ------------------------------------------------------------------
    def beat(self, started_at: float) -> None:
        """Record that this process's controller is alive (called every HEARTBEAT_SECONDS)."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO controllers(id, pid, host, started_at, heartbeat_at) VALUES (1, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET pid = excluded.pid, host = excluded.host,"
                " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
                (os.getpid(), socket.gethostname(), started_at, now),
            )

    def clear_beat(self) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM controllers WHERE pid = ?", (os.getpid(),))

    def controller_alive(self) -> bool:
        """True if the experiment's owner is alive: it refreshed its heartbeat within
        HEARTBEAT_STALE_SECONDS and, on this host, its process still exists (a kill -9 is seen
        at once, not after the heartbeat goes stale)."""
        return self.owner() is not None

    def owner(self) -> tuple[int, str, float] | None:
        """(pid, host, started_at) of the live owner, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT pid, host, started_at, heartbeat_at FROM controllers WHERE id = 1"
            ).fetchone()
        return row[:3] if row is not None and _alive(*row) else None

    def unless_owned(
        self, write: Callable[[sqlite3.Connection], T], holder: bool = False
    ) -> tuple[bool, T | None]:
        """Run `write(db)` in one IMMEDIATE transaction on this file unless a live owner holds the
        experiment: (True, its result), or (False, None) with nothing written. Readers use it to
        settle what a dead owner left without taking the lease, so a trainer that starts at the
        same time is never refused (`take_lease` and this transaction serialize). holder: the
        caller holds the lease itself (else a lease held in this process counts as an owner)."""
        owner, result = self._unless_owned(write, holder)
        return owner is None, result

    def take_lease(self, started_at: float) -> tuple[int, str, float] | None:
        """Become the owner unless another live process is (then its (pid, host, started_at)).
        One IMMEDIATE transaction: two processes that start at once cannot both win."""

        def take(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO controllers(id, pid, host, started_at, heartbeat_at)"
                " VALUES (1, ?, ?, ?, ?)",
                (os.getpid(), socket.gethostname(), started_at, time.time()),
            )

        return self._unless_owned(take, holder=True)[0]

    def _unless_owned(
        self, write: Callable[[sqlite3.Connection], T], holder: bool
    ) -> tuple[tuple | None, T | None]:
        """(the live other owner's (pid, host, started_at), None) with nothing written, or
        (None, write(db)) committed: one IMMEDIATE transaction."""
        with self._lock:
            self._db.commit()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT pid, host, started_at, heartbeat_at FROM controllers WHERE id = 1"
                ).fetchone()
                mine = row is not None and row[0] == os.getpid() and row[1] == socket.gethostname()
                if row is not None and not (holder and mine) and _alive(*row):
                    self._db.rollback()
                    return row[:3], None
                result = write(self._db)
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
        return None, result


def fail_applying(db: sqlite3.Connection, reason: str) -> list[int]:
    """`CommandStore.fail_unfinished` on the connection `db`, in the caller's transaction."""
    rows = db.execute("SELECT command_id FROM commands WHERE status = ?", (APPLYING,)).fetchall()
    db.execute(
        "UPDATE commands SET status = ?, applied_at = ?, error = ? WHERE status = ?",
        (FAILED, time.time(), reason, APPLYING),
    )
    return [row[0] for row in rows]


def _alive(pid: int, host: str, started_at: float, heartbeat_at: float) -> bool:
    if time.time() - heartbeat_at >= HEARTBEAT_STALE_SECONDS:
        return False
    if host != socket.gethostname():
        return True  # another machine: its heartbeat is all we can see
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
