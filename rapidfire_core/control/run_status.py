"""The life cycle of a run: its statuses and the one table of allowed transitions.

    NEW --first turn--> ONGOING --last step--> COMPLETED
     |                   |  ^
     |                   |  | resume
     |                   v  |
     +----- stop ------> STOPPED
    any status but DELETED --delete--> DELETED        (a deleted run's rows stay queryable)
    NEW, ONGOING, STOPPED --error, OOM, NaN--> FAILED

STOPPED is also where a run lands when `run_fit` is interrupted or its process died while the
run was in flight (found when the experiment is reopened, or by the next owner): such a run is
marked `interrupted` in the store, and the next `run_fit` of its sweep trains it on from its
last checkpoint (STOPPED -> ONGOING). A transition not in the table is
an `IllegalTransition`: the store never writes it.
"""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    NEW = "NEW"
    ONGOING = "ONGOING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    DELETED = "DELETED"


ALLOWED_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.NEW: frozenset({RunStatus.ONGOING, RunStatus.STOPPED, RunStatus.FAILED, RunStatus.DELETED}),
    RunStatus.ONGOING: frozenset(
        {RunStatus.COMPLETED, RunStatus.STOPPED, RunStatus.FAILED, RunStatus.DELETED}
    ),
    RunStatus.STOPPED: frozenset({RunStatus.ONGOING, RunStatus.FAILED, RunStatus.DELETED}),
    RunStatus.COMPLETED: frozenset({RunStatus.DELETED}),
    RunStatus.FAILED: frozenset({RunStatus.DELETED}),
    RunStatus.DELETED: frozenset(),
}

# Statuses in which a run still wants turns.
IN_FLIGHT = frozenset({RunStatus.NEW, RunStatus.ONGOING})


class IllegalTransition(RuntimeError):
    """A status change the life cycle does not allow (e.g. resuming a COMPLETED run)."""


def check_transition(run_id: int, old: RunStatus, new: RunStatus) -> None:
    """Raise IllegalTransition unless `old -> new` is in ALLOWED_TRANSITIONS (or old == new)."""
    if old != new and new not in ALLOWED_TRANSITIONS[old]:
        raise IllegalTransition(f"run {run_id} is {old.value}: it cannot become {new.value}")
