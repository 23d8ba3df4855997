"""What an owner that died left behind: runs in flight, commands half applied.

A process that trains an experiment can end without cleaning up (kill -9, OOM, power loss, a
second Ctrl-C). Its runs left NEW or ONGOING become STOPPED and `interrupted` (the next
`run_fit` of their sweep continues them from their last checkpoint); the commands it had
claimed but not finished fail with the reason (a command is applied at most once); pending
ones wait for the next owner. `settle_orphans` does both in the caller's transaction: inside
`CommandStore.unless_owned`, so it happens only while no live process owns the experiment (or
by the owner itself), and a trainer starting at the same moment is never refused.
"""

from __future__ import annotations

import sqlite3

from rapidfire_core.control.command_store import fail_applying
from rapidfire_core.control.run_store import stop_orphans

RUN_REASON = "the process ended while the run was in flight"
COMMAND_REASON = "the process applying it ended before it finished"


def settle_orphans(db: sqlite3.Connection, keep: frozenset[int] = frozenset()) -> list[int]:
    """Stop the orphaned runs (but those in `keep`: the caller trains them) and fail the commands
    left applying, on `db` in its transaction. Returns the ids of the runs it stopped."""
    runs = stop_orphans(db, RUN_REASON, keep)
    fail_applying(db, COMMAND_REASON)
    return runs


__all__ = ["COMMAND_REASON", "RUN_REASON", "settle_orphans"]
