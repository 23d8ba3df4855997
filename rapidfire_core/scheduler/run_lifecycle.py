"""A run's status changes in one place: `RunLifecycle.set`, driven by one table.

The status lives in the run store (`runs.db`, the durable truth every process reads); the
controller keeps a mirror of the runs it made (read at every step boundary, so no I/O); the
trackers hold an MLflow-style status per run. `set` writes the store (which refuses a transition
`control.run_status.ALLOWED_TRANSITIONS` does not allow, before anything else changes), then the
mirror, then derives the tracking status from `TRACKING_STATUS`:

    run status   tracking run       on entering it
    NEW          RUNNING            (started when the run is registered)
    ONGOING      RUNNING            reopened if it was ended (a resumed or continued run)
    STOPPED      KILLED             ended (a stop command, an interrupt, a dead process)
    COMPLETED    FINISHED           ended
    FAILED       FAILED             ended
    DELETED      KILLED, deleted    ended if it was running (never left RUNNING), then deleted

`settle_tracking` repairs a tracking run its process left behind the store (it died after
the store changed but before the tracker heard): the tracker's status is made the table's.
Nothing else writes a run's status.
"""

from __future__ import annotations

from typing import Any

from rapidfire_core.control.run_status import RunStatus
from rapidfire_core.control.run_store import RunStore

TRACKING_STATUS: dict[RunStatus, str] = {
    RunStatus.NEW: "RUNNING",
    RunStatus.ONGOING: "RUNNING",
    RunStatus.STOPPED: "KILLED",
    RunStatus.COMPLETED: "FINISHED",
    RunStatus.FAILED: "FAILED",
    RunStatus.DELETED: "KILLED",
}


class RunLifecycle:
    """The status of an experiment's runs: the store, the controller's mirror, the trackers.

    tracker: the experiment's trackers (`tracking.fanout.Trackers` or one backend): `end_run`,
    `reopen_run`, `delete_run`, `run_status`."""

    def __init__(self, store: RunStore, tracker: Any) -> None:
        self.store = store
        self.tracker = tracker
        self._status: dict[int, RunStatus] = {}

    def status(self, run_id: int) -> RunStatus | None:
        """The mirrored status of a run this controller made or took back (None: not one)."""
        return self._status.get(run_id)

    def register(self, run_id: int, status: RunStatus) -> None:
        """Mirror a run's stored status without changing it (a new NEW run; a run taken back)."""
        self._status[run_id] = status

    def set(self, run_id: int, status: RunStatus, **fields: Any) -> RunStatus:
        """Make `status` the run's status (with the store `fields` written in the same update),
        and its tracking run's the table's. IllegalTransition if the life cycle does not allow
        it (nothing changes then). Returns the status it had."""
        old = self._status.get(run_id) or self.store.status(run_id)
        self.store.update_run(run_id, status=status, **fields)
        self._status[run_id] = status
        if old is not status:  # (a run's every turn sets ONGOING again: no tracking change)
            mlflow_id = self.store.get_run(run_id)["mlflow_run_id"]
            if mlflow_id:
                self._track(mlflow_id, old, status)
        return old

    def _track(self, mlflow_id: str, old: RunStatus, new: RunStatus) -> None:
        was, wanted = TRACKING_STATUS[old], TRACKING_STATUS[new]
        if new is RunStatus.DELETED:
            if was == "RUNNING":
                self.tracker.end_run(mlflow_id, wanted)
            self.tracker.delete_run(mlflow_id)
        elif wanted == "RUNNING":
            if was != "RUNNING":
                self.tracker.reopen_run(mlflow_id)
        else:
            self.tracker.end_run(mlflow_id, wanted)

    def settle_tracking(self, mlflow_id: str | None, status: RunStatus) -> bool:
        """A tracking run still RUNNING for a run whose stored status is no longer in flight
        (its process died before the tracker heard) ends with the table's status. True if it did."""
        wanted = TRACKING_STATUS[status]
        if not mlflow_id or wanted == "RUNNING" or self.tracker.run_status(mlflow_id) != "RUNNING":
            return False
        self.tracker.end_run(mlflow_id, wanted)
        return True


__all__ = ["TRACKING_STATUS", "RunLifecycle"]
