"""Commands as durable rows: any process submits, one applier takes each exactly once."""

import subprocess
import sys
import textwrap

import pytest

from rapidfire_core.control import CommandError, CommandStore


def test_submit_validates_the_request_itself(tmp_path):
    store = CommandStore(tmp_path / "runs.db")
    with pytest.raises(CommandError, match="unknown op 'pause'"):
        store.submit("pause", 1)
    with pytest.raises(CommandError, match="unknown source"):
        store.submit("stop", 1, source="web")
    with pytest.raises(CommandError, match="run_id must be an int"):
        store.submit("stop", "1")
    with pytest.raises(CommandError, match="warm_start must be true or false"):
        store.submit("clone", 1, {"changes": {}, "warm_start": "yes"})
    with pytest.raises(CommandError, match="unexpected payload"):
        store.submit("stop", 1, {"changes": {"r": 4}})
    with pytest.raises(CommandError, match="must be JSON"):
        store.submit("clone", 1, {"changes": {"learning_rate": object()}})
    assert store.all() == []  # nothing was written
    clone = store.submit("clone", 3, {"changes": {"learning_rate": 1e-4}}, source="cli")
    assert clone.status == "pending" and clone.payload == {
        "changes": {"learning_rate": 1e-4},
        "warm_start": False,
    }


def test_text_that_is_not_unicode_is_refused_at_submit_and_storable_in_an_error(tmp_path):
    store = CommandStore(tmp_path / "runs.db")
    # "caf\udce9": what Python makes of the byte 0xE9 on a UTF-8 command line; "\ud800": JSON
    for changes in ({"caf\udce9": 1}, {"learning_rate": "\ud800"}, {"r": ["ok", "x\udcff"]}):
        with pytest.raises(CommandError, match="not valid Unicode text"):
            store.submit("clone", 1, {"changes": changes})
    with pytest.raises(CommandError, match="nested too deeply"):
        nested: list = []
        for _ in range(100_000):
            nested = [nested]
        store.submit("clone", 1, {"changes": {"x": nested}})
    assert store.all() == []
    # an error that quotes such text (a row stored by an older version) is still recorded
    cmd = store.submit("stop", 1)
    assert store.claim(cmd.command_id)
    done = store.finish(cmd.command_id, error="change 'caf\udce9': not a field")
    assert done.status == "failed" and done.error == "change 'caf\\udce9': not a field"
    assert store.pending() == [] and [c.status for c in store.all()] == ["failed"]


def test_each_command_is_claimed_once_and_its_outcome_kept(tmp_path):
    store = CommandStore(tmp_path / "runs.db")
    cmd = store.submit("clone", 1, {"changes": {"r": 4}, "warm_start": True})
    other = CommandStore(tmp_path / "runs.db")  # a second applier
    assert store.claim(cmd.command_id) and not other.claim(cmd.command_id)
    assert store.pending() == []
    done = store.finish(cmd.command_id, result={"run_id": 7})
    assert (done.status, done.new_run_id, other.get(cmd.command_id).status) == ("applied", 7, "applied")
    failed = store.submit("resume", 2)
    store.claim(failed.command_id)
    store.finish(failed.command_id, error="run 2 is COMPLETED: only a STOPPED run can be resumed")
    assert store.wait(failed.command_id, timeout=1).error.startswith("run 2 is COMPLETED")
    with pytest.raises(TimeoutError):
        store.wait(store.submit("stop", 3).command_id, timeout=0.2)


def _submitter(db, who, n):
    return textwrap.dedent(f"""
        from rapidfire_core.control import CommandStore
        store = CommandStore({str(db)!r})
        for i in range({n}):
            store.submit("stop", 1000 + i, source={who!r})
    """)


def _claimer(db):
    return textwrap.dedent(f"""
        import time
        from rapidfire_core.control import CommandStore
        store = CommandStore({str(db)!r})
        mine, idle = [], 0
        while idle < 40:
            pending = store.pending()
            idle = idle + 1 if not pending else 0
            for c in pending:
                if store.claim(c.command_id):
                    mine.append(c.command_id)
                    store.finish(c.command_id, result={{"by": "me"}})
            time.sleep(0.01)
        print(",".join(map(str, mine)))
    """)


def test_two_processes_submitting_and_two_claiming_apply_each_command_once(tmp_path):
    db = tmp_path / "runs.db"
    CommandStore(db).close()
    n = 40
    procs = [subprocess.Popen([sys.executable, "-c", _claimer(db)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    for proc in [
        subprocess.Popen([sys.executable, "-c", _submitter(db, w, n)]) for w in ("cli", "dashboard")
    ]:
        assert proc.wait(timeout=120) == 0
    claimed = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        claimed += [int(x) for x in out.strip().split(",") if x]
    commands = CommandStore(db).all()
    assert len(commands) == 2 * n
    assert sorted(claimed) == [c.command_id for c in commands]  # every one, none twice
    assert {c.status for c in commands} == {"applied"}
    assert {c.source for c in commands} == {"cli", "dashboard"}


def test_controller_liveness_follows_its_heartbeat(tmp_path):
    from rapidfire_core.control.owner_lease import OwnerLease

    store = CommandStore(tmp_path / "runs.db")
    assert not store.controller_alive()
    beat = OwnerLease(store)
    beat.acquire()
    assert CommandStore(tmp_path / "runs.db").controller_alive()
    beat.release()
    assert not store.controller_alive()
