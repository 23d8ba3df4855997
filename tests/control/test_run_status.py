"""The run life cycle: one table of allowed transitions, enforced by the run store."""

import pytest

from rapidfire_core.control import ALLOWED_TRANSITIONS, IllegalTransition, RunStatus, RunStore

ALLOWED = {
    ("NEW", "ONGOING"), ("NEW", "STOPPED"), ("NEW", "FAILED"), ("NEW", "DELETED"),
    ("ONGOING", "COMPLETED"), ("ONGOING", "STOPPED"), ("ONGOING", "FAILED"), ("ONGOING", "DELETED"),
    ("STOPPED", "ONGOING"), ("STOPPED", "FAILED"), ("STOPPED", "DELETED"),
    ("COMPLETED", "DELETED"), ("FAILED", "DELETED"),
}  # fmt: skip


def _run_in(store: RunStore, status: RunStatus) -> int:
    """A run brought to `status` along allowed transitions."""
    path = {
        RunStatus.NEW: [],
        RunStatus.ONGOING: [RunStatus.ONGOING],
        RunStatus.STOPPED: [RunStatus.STOPPED],
        RunStatus.COMPLETED: [RunStatus.ONGOING, RunStatus.COMPLETED],
        RunStatus.FAILED: [RunStatus.FAILED],
        RunStatus.DELETED: [RunStatus.DELETED],
    }[status]
    run = store.create_run("r", "SFT", {})
    for step in path:
        store.update_run(run, status=step)
    return run


def test_the_table_is_the_documented_life_cycle():
    table = {(a.value, b.value) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets}
    assert table == ALLOWED


@pytest.mark.parametrize("old", list(RunStatus))
@pytest.mark.parametrize("new", list(RunStatus))
def test_store_writes_allowed_transitions_and_refuses_the_rest(tmp_path, old, new):
    store = RunStore(tmp_path / "runs.db")
    run = _run_in(store, old)
    if old == new or (old.value, new.value) in ALLOWED:
        store.update_run(run, status=new, error="why")
        assert store.status(run) is new
    else:
        with pytest.raises(
            IllegalTransition, match=f"run {run} is {old.value}: it cannot become {new.value}"
        ):
            store.update_run(run, status=new, error="must not be written")
        assert store.status(run) is old
        assert store.get_run(run)["error"] != "must not be written"


def test_a_clone_records_its_parent_and_warm_start(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    parent = store.create_run("p", "SFT", {"train.learning_rate": 1e-3})
    child = store.create_run("c", "SFT", {"train.learning_rate": 1e-4}, parent_run_id=parent, warm_start=True)
    info = store.runs_frame().set_index("run_id")
    assert info.loc[child, "parent_run_id"] == parent and bool(info.loc[child, "warm_start"])
    assert not bool(info.loc[parent, "warm_start"])
