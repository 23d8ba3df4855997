"""One live owner per experiment: a second trainer is refused, a dead one frees the lease at
once, readers change nothing, and two processes starting a new MLflow store at once both work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from rapidfire_core import Experiment
from rapidfire_core.control import CommandStore, RunStatus, RunStore
from rapidfire_core.control.owner_lease import ExperimentBusy, OwnerLease


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def test_a_live_owner_refuses_a_second_and_a_killed_one_frees_the_lease_at_once(tmp_path):
    db = tmp_path / "exp" / "runs.db"
    store = RunStore(db)
    run = store.create_run("a", "SFT", {})
    store.update_run(run, status=RunStatus.ONGOING)
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from rapidfire_core.control import CommandStore
            from rapidfire_core.control.owner_lease import OwnerLease
            OwnerLease(CommandStore({str(db)!r})).acquire()
            print("held", flush=True)
            time.sleep(120)
        """)],
        env=_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert owner.stdout.readline().strip() == "held"
        with pytest.raises(ExperimentBusy, match=f"pid {owner.pid}"):
            OwnerLease(CommandStore(db)).acquire()
        reader = Experiment("exp", experiment_path=tmp_path, verbose=False)  # reads, changes nothing
        assert reader.get_runs_info()["status"].tolist() == ["ONGOING"]
        with pytest.raises(ExperimentBusy):
            reader.continue_fit()
        reader.end()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert not CommandStore(db).controller_alive()  # its pid is gone: no wait for a stale heartbeat
    lease = OwnerLease(CommandStore(db))
    lease.acquire()
    lease.release()
    reopened = Experiment("exp", experiment_path=tmp_path, verbose=False)  # now the runs are orphans
    info = reopened.get_runs_info()
    assert info["status"].tolist() == ["STOPPED"] and info["interrupted"].tolist() == [True]
    reopened.end()


def test_two_objects_of_one_process_cannot_both_own_an_experiment(tmp_path):
    first, second = (
        OwnerLease(CommandStore(tmp_path / "runs.db")),
        OwnerLease(CommandStore(tmp_path / "runs.db")),
    )
    first.acquire()
    first.acquire()  # nested: run_fit holds it, its controller's loop takes it again
    with pytest.raises(ExperimentBusy, match="this process already trains"):
        second.acquire()
    first.release()
    assert CommandStore(tmp_path / "runs.db").controller_alive()
    first.release()
    assert not CommandStore(tmp_path / "runs.db").controller_alive()
    second.acquire()
    second.release()


def test_starting_an_mlflow_store_waits_for_another_process_setting_it_up(tmp_path):
    # MLflow's first use of a SQLite store migrates its schema; concurrent first uses raced
    # ("duplicate column name: step"). The tracker sets the store up under an exclusive file
    # lock beside it: while another holder has the lock, a new tracker waits.
    import fcntl
    import threading

    from rapidfire_core.tracking.mlflow_tracker import MLflowTracker, default_tracking_uri

    uri = default_tracking_uri(tmp_path)
    made = []
    with open(str(tmp_path / "mlflow.db") + ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a process in the middle of its own setup
        starter = threading.Thread(target=lambda: made.append(MLflowTracker("race", uri)))
        starter.start()
        starter.join(timeout=2.0)
        assert starter.is_alive() and not made  # it waits for the lock
        fcntl.flock(held, fcntl.LOCK_UN)
    starter.join(timeout=300)  # a fresh venv imports and byte-compiles MLflow here: slow under load
    assert made and made[0].experiment_id == MLflowTracker("race", uri).experiment_id  # one experiment
    made[0].close()
