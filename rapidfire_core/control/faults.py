"""Fault injection for crash tests: kill this process at a named point of the engine (or,
for `store_full`, make the disk under the run store refuse every write from then on).

    RAPIDFIRE_FAULT=checkpoint_write:3     SIGKILL on the 3rd time the point is reached
    RAPIDFIRE_FAULT=mid_chunk:5,metric_flush:2      (several: the first that fires kills)

Points (each a `fault_point(name)` call in the engine):

    mid_chunk         after an optimizer step that did not end a chunk (scheduler.run)
    checkpoint_write  after each file of a checkpoint is written, before the manifest and the
                      rename (control.checkpoints): a torn checkpoint folder is left behind
    metric_flush      after the run store got a batch of metrics, before MLflow did
                      (tracking.metric_buffer)
    after_checkpoint  right after a checkpoint was renamed into place, before MLflow saw the
                      steps it covers (scheduler.controller)
    after_completion  a run is COMPLETED in the run store; MLflow has neither its last
                      metrics nor its end (scheduler.controller)
    store_full        not a kill: from the Nth write transaction of runs.db on, every write
                      fails with SQLite's "database or disk is full", as on a full disk
                      (control.sqlite_file)

The kill is SIGKILL (no `finally`, no atexit, no flush): what a `kill -9`, an OOM kill or a
power loss leaves. Without the variable a point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "RAPIDFIRE_FAULT"
POINTS = frozenset(
    {"mid_chunk", "checkpoint_write", "metric_flush", "after_checkpoint", "after_completion", "store_full"}
)


def _parse(text: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown fault point {name!r}; expected one of {sorted(POINTS)}")
        armed[name] = int(count or 1)
    return armed


_ARMED = _parse(os.environ.get(ENV, ""))
_SEEN: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill the process (SIGKILL) if `name` is armed and reached its count (module docstring)."""
    if not _ARMED or name not in _ARMED:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] >= _ARMED[name]:
        os.kill(os.getpid(), signal.SIGKILL)


def fault_active(name: str) -> bool:
    """True from the time `name` reached its count on (a fault that persists, like a full disk)."""
    if not _ARMED or name not in _ARMED:
        return False
    _SEEN[name] = _SEEN.get(name, 0) + 1
    return _SEEN[name] >= _ARMED[name]


__all__ = ["ENV", "POINTS", "fault_active", "fault_point"]
