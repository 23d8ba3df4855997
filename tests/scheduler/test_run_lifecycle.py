"""Every status change goes through one setter; the tracking status follows from one table."""

from __future__ import annotations

import pytest

from rapidfire_core.control import IllegalTransition, RunStatus, RunStore
from rapidfire_core.scheduler.run_lifecycle import TRACKING_STATUS, RunLifecycle
from tests.scheduler.fake_executor import FakeTracker

S = RunStatus


def _lifecycle(tmp_path):
    store, tracker = RunStore(tmp_path / "runs.db"), FakeTracker()
    lifecycle = RunLifecycle(store, tracker)

    def new_run() -> int:
        run_id = store.create_run("run", "SFT", {})
        store.update_run(run_id, mlflow_run_id=tracker.start_run(f"run-{run_id}", {}))
        lifecycle.register(run_id, S.NEW)
        return run_id

    return lifecycle, store, tracker, new_run


@pytest.mark.parametrize(
    "path",
    [
        [S.ONGOING, S.COMPLETED],
        [S.ONGOING, S.STOPPED, S.ONGOING, S.FAILED],
        [S.STOPPED, S.DELETED],
        [S.ONGOING, S.DELETED],
        [S.ONGOING, S.COMPLETED, S.DELETED],
    ],
)
def test_the_tracking_run_follows_the_table_at_every_step(tmp_path, path):
    lifecycle, store, tracker, new_run = _lifecycle(tmp_path)
    run_id = new_run()
    for status in path:
        ended_before = tracker.status[f"run-{run_id}"] != "RUNNING"
        lifecycle.set(run_id, status)
        assert store.status(run_id) is status and lifecycle.status(run_id) is status
        if status is S.DELETED and ended_before:  # a deleted run keeps the end it had (FINISHED, ...)
            assert tracker.status[f"run-{run_id}"] != "RUNNING"
        else:
            assert tracker.status[f"run-{run_id}"] == TRACKING_STATUS[status]
    assert (f"run-{run_id}" in tracker.deleted) == (path[-1] is S.DELETED)


def test_a_transition_the_life_cycle_forbids_changes_nothing(tmp_path):
    lifecycle, store, tracker, new_run = _lifecycle(tmp_path)
    run_id = new_run()
    lifecycle.set(run_id, S.ONGOING)
    lifecycle.set(run_id, S.COMPLETED, global_step=4)
    with pytest.raises(IllegalTransition, match="COMPLETED: it cannot become ONGOING"):
        lifecycle.set(run_id, S.ONGOING, global_step=9)
    assert store.get_run(run_id)["global_step"] == 4 and lifecycle.status(run_id) is S.COMPLETED
    assert tracker.status[f"run-{run_id}"] == "FINISHED"


def test_a_tracking_run_a_dead_process_left_running_is_settled_to_the_stored_status(tmp_path):
    lifecycle, store, tracker, new_run = _lifecycle(tmp_path)
    run_id = new_run()
    store.update_run(run_id, status=S.ONGOING)
    store.update_run(run_id, status=S.COMPLETED)  # the process died before the tracker heard
    assert tracker.status[f"run-{run_id}"] == "RUNNING"
    assert lifecycle.settle_tracking(f"run-{run_id}", S.COMPLETED)
    assert tracker.status[f"run-{run_id}"] == "FINISHED"
    assert not lifecycle.settle_tracking(f"run-{run_id}", S.COMPLETED)  # nothing left to settle
