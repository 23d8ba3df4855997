"""The owner lease: one live process trains an experiment at a time.

The process that trains (a `run_fit` / `continue_fit`) holds the lease: the `controllers` row
of the experiment's `runs.db` with its pid, host and a heartbeat it refreshes every
HEARTBEAT_SECONDS from a daemon thread (`control.command_store`). The owner is alive while its
heartbeat is fresh and, on this host, its process exists; so a kill -9 frees the lease at
once, and a process on another host after HEARTBEAT_STALE_SECONDS.

    lease.acquire()    take it, or ExperimentBusy naming the live owner (nothing is changed)
    lease.release()    give it back (the row is removed)

`acquire` nests (a `run_fit` holds it; its controller's loop takes it again): only the outer
`release` gives it back. Only the lease holder may treat runs left NEW/ONGOING as interrupted
(their trainer died): readers (a notebook reading results, the CLI, the dashboard) never
change run state while an owner is alive.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import warnings

from rapidfire_core.control.command_store import HEARTBEAT_SECONDS, HEARTBEAT_STALE_SECONDS, CommandStore

# Leases held in this process, by database file: the row's pid cannot tell two Experiment
# objects of one process apart.
_HELD_HERE: set[str] = set()
_HELD_LOCK = threading.Lock()


class ExperimentBusy(RuntimeError):
    """Another live process trains this experiment."""


class OwnerLease:
    def __init__(self, store: CommandStore) -> None:
        self._store = store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = time.time()
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        key = str(self._store.path.resolve())
        with _HELD_LOCK:
            if key in _HELD_HERE:
                raise ExperimentBusy(
                    f"this process already trains the experiment at {self._store.path.parent} (another "
                    "Experiment object's run_fit): wait for it, or steer it with stop/resume/delete/clone"
                )
            owner = self._store.take_lease(self._started_at)
            if owner is None:
                _HELD_HERE.add(key)
        if owner is not None:
            pid, host, started = owner
            raise ExperimentBusy(
                f"another process (pid {pid} on {host}, training since "
                f"{time.strftime('%H:%M:%S', time.localtime(started))}) trains the experiment at "
                f"{self._store.path.parent}: steer it with stop/resume/delete/clone, or wait until it ends"
            )
        self._depth = 1
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rapidfire-owner-lease", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        failing_since: float | None = None
        warned = False
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._store.beat(self._started_at)
            except sqlite3.Error as exc:
                # A busy store: the next beat retries. Failing for half the stale time means a
                # process on another host may soon take this lease as dead: say so, once.
                now = time.monotonic()
                failing_since = failing_since or now
                if not warned and now - failing_since >= HEARTBEAT_STALE_SECONDS / 2:
                    warned = True
                    warnings.warn(
                        f"the experiment's owner heartbeat has failed for {now - failing_since:.0f} s "
                        f"({type(exc).__name__}: {exc}); after {HEARTBEAT_STALE_SECONDS:.0f} s another "
                        "host may treat this process as dead",
                        RuntimeWarning,
                        stacklevel=1,
                    )
            else:
                failing_since, warned = None, False

    def release(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self._store.clear_beat()
        except sqlite3.Error:
            pass
        with _HELD_LOCK:
            _HELD_HERE.discard(str(self._store.path.resolve()))


__all__ = ["ExperimentBusy", "OwnerLease"]
