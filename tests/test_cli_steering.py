"""`rapidfire runs|stop|resume|delete|clone|dashboard` against stores (a fake training process
applies the commands), with their exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from rapidfire_core import cli
from rapidfire_core.control import CommandStore, RunStatus, RunStore
from rapidfire_core.control.run_store import MetricRecord

from .dashboard.fake_engine import FakeEngine, make_experiment

GRID = [{"train.learning_rate": 1e-3, "peft.r": 8}, {"train.learning_rate": 1e-4, "peft.r": 8}]


@pytest.fixture
def root(tmp_path):
    runs, _ = make_experiment(tmp_path, "sweep", GRID)
    runs.log_metric_records(
        [MetricRecord(1, 1, 0.1, 1, {"loss": 2.5}), MetricRecord(1, 2, 0.2, 1, {"loss": 2.25})]
    )
    runs.update_run(1, status=RunStatus.ONGOING, global_step=2, chunks_done=1)
    return tmp_path


@pytest.fixture
def engine(root):
    """A live controller that applies commands (and trains nothing, so numbers stay put)."""
    with FakeEngine(root / "sweep", interval=0.05, train=False) as eng:
        yield eng


def run_cli(root, *argv):
    return cli.main([argv[0], *argv[1:], "--experiment-path", str(root)])


def test_parse_assignments_reads_json_else_strings():
    got = cli.parse_assignments(["learning_rate=1e-4", "r=16", "bf16=true", 'target_modules=["q_proj"]',
                                 "optim=adamw_torch", "note=a=b", "empty="])  # fmt: skip
    assert got == {"learning_rate": 1e-4, "r": 16, "bf16": True, "target_modules": ["q_proj"],
                   "optim": "adamw_torch", "note": "a=b", "empty": ""}  # fmt: skip
    assert isinstance(got["r"], int) and isinstance(got["learning_rate"], float)
    for bad in ("learning_rate", "=3"):
        with pytest.raises(cli.CliError, match="KNOB=VALUE"):
            cli.parse_assignments([bad])


def test_runs_table_shows_varying_knobs_progress_and_latest_loss(root, capsys):
    assert run_cli(root, "runs", "sweep") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "no process is training it now" in lines[0]  # so its runs would continue on a run_fit
    header = lines[1].split()
    assert header == ["id", "status", "chunks", "step", "resume", "origin", "learning_rate", "loss"]
    assert lines[2].split() == ["1", "ONGOING", "1", "2/400", "chunk1:run_fit", "-", "0.001", "2.25"]
    assert lines[3].split() == ["2", "NEW", "0", "0/400", "chunk1:run_fit", "-", "0.0001", "-"]


def test_a_run_in_its_first_chunk_shows_the_step_it_logged_not_the_stored_zero(root, capsys):
    from rapidfire_core.control import RunStore

    store = RunStore(root / "sweep" / "runs.db")
    store.update_run(1, global_step=0, chunks_done=0)  # stored at chunk ends only
    store.close()
    assert run_cli(root, "runs", "sweep") == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:4] == ["1", "ONGOING", "0", "2/400"]


def test_runs_json(root, capsys):
    assert run_cli(root, "runs", "sweep", "--json") == 0
    body = json.loads(capsys.readouterr().out)
    assert body["varying_knobs"] == ["train.learning_rate"]
    assert [r["run_id"] for r in body["runs"]] == [1, 2]
    assert body["runs"][0]["latest"] == {"loss": 2.25}


def test_experiment_may_be_given_as_a_path(root, capsys):
    assert cli.main(["runs", str(root / "sweep")]) == 0
    assert "ONGOING" in capsys.readouterr().out


def test_stop_waits_for_the_controller_and_reports(root, engine, capsys):
    assert run_cli(root, "stop", "sweep", "1") == 0
    assert "run 1 stopped" in capsys.readouterr().out
    assert RunStore(root / "sweep" / "runs.db").status(1) == RunStatus.STOPPED
    assert CommandStore(root / "sweep" / "runs.db").all()[0].source == "cli"
    assert run_cli(root, "resume", "sweep", "1") == 0
    assert "run 1 resumed" in capsys.readouterr().out
    assert run_cli(root, "delete", "sweep", "2") == 0
    assert RunStore(root / "sweep" / "runs.db").status(2) == RunStatus.DELETED


def test_clone_prints_the_new_run_and_sends_typed_changes(root, engine, capsys):
    code = run_cli(
        root, "clone", "sweep", "1", "--set", "learning_rate=1e-4", "--set", "r=16", "--warm-start"
    )
    assert code == 0
    assert "new run 3" in capsys.readouterr().out
    command = CommandStore(root / "sweep" / "runs.db").all()[-1]
    assert command.payload == {"changes": {"learning_rate": 1e-4, "r": 16}, "warm_start": True}
    clone = RunStore(root / "sweep" / "runs.db").get_run(3)
    assert clone["parent_run_id"] == 1 and clone["knobs"]["peft.r"] == 16


def test_a_failed_command_exits_1_with_its_error(root, engine, capsys):
    assert run_cli(root, "clone", "sweep", "1", "--set", "learning_rate=-1") == 1
    err = capsys.readouterr().err
    assert "failed" in err and "learning_rate" in err and "Traceback" not in err
    RunStore(root / "sweep" / "runs.db").update_run(2, status=RunStatus.DELETED)
    assert run_cli(root, "resume", "sweep", "2") == 1
    assert "DELETED" in capsys.readouterr().err


def test_without_a_training_process_the_command_stays_pending_exit_3(root, capsys):
    assert run_cli(root, "stop", "sweep", "1") == 3
    err = capsys.readouterr().err
    assert (
        "no process is training experiment sweep now; the command stays pending and is applied when one does"
        in err
    )
    assert [c.status for c in CommandStore(root / "sweep" / "runs.db").all()] == ["pending"]
    # --no-wait: queued is success, with the same warning
    assert run_cli(root, "stop", "sweep", "1", "--no-wait") == 0
    assert "stays pending" in capsys.readouterr().out


def test_timeout_exits_3_and_wait_waits_without_a_controller(root, capsys):
    assert run_cli(root, "stop", "sweep", "1", "--wait", "--timeout", "0.3") == 3
    assert "still pending after 0.3 s" in capsys.readouterr().err
    # a controller that beats but is busy: the wait ends at the timeout
    commands = CommandStore(root / "sweep" / "runs.db")
    commands.beat(started_at=0.0)
    assert run_cli(root, "stop", "sweep", "1", "--timeout", "0.3") == 3
    assert "still pending" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["stop", "nope", "1"], "no experiment 'nope'"),
        (["stop", "sweep", "9"], "has no run 9"),
        (["clone", "sweep", "1", "--set", "learning_rate"], "KNOB=VALUE"),
        (["runs", "../sweep"], "not an experiment directory"),
        (["stop", "sweep", "1", "--timeout", "0"], "--timeout must be positive"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(root, capsys, argv, says):
    assert run_cli(root, *argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert CommandStore(root / "sweep" / "runs.db").all() == []


def test_non_numeric_run_id_is_an_argparse_usage_error(root, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(root, "stop", "sweep", "one")
    assert exc.value.code == 2


def test_dashboard_requires_the_users_token_by_default_on_every_address(root, monkeypatch, capsys):
    from rapidfire_core.dashboard.token import read_token

    seen = {}

    def fake_serve(served_root, host, port, token, announce, require_token, allow_code_edits):
        from rapidfire_core.dashboard.server import server_token

        token = server_token(host, token, require_token)
        seen.update(root=served_root, host=host, port=port, token=token, allow_code_edits=allow_code_edits)
        announce(f"http://{host}:{port}/" + (f"?token={token}" if token else ""))

    monkeypatch.setattr("rapidfire_core.dashboard.server.serve", fake_serve)
    assert cli.main(["dashboard", str(root)]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8765 and seen["allow_code_edits"] is False
    assert len(seen["token"]) >= 32 and seen["token"] == read_token()
    out = capsys.readouterr().out
    assert f"?token={seen['token']}" in out and "readable by you only" in out
    assert cli.main(["dashboard", str(root), "--host", "0.0.0.0", "--port", "9999"]) == 0
    assert seen["host"] == "0.0.0.0" and seen["token"] == read_token()  # the same token
    assert cli.main(["dashboard", str(root), "--token", "mine", "--allow-code-edits"]) == 0
    assert seen["token"] == "mine" and seen["allow_code_edits"] is True
    assert "may load code" in capsys.readouterr().out
    assert cli.main(["dashboard", str(root), "--no-token"]) == 0
    assert seen["token"] is None and "every user of this machine" in capsys.readouterr().out
    assert cli.main(["dashboard", str(root), "--no-token", "--host", "0.0.0.0"]) == 2
    assert "without a token" in capsys.readouterr().err


def test_clone_with_a_key_that_is_not_utf8_fails_alone_with_a_reason(root):
    # A real process: the byte 0xE9 reaches argv as it does from a shell's $'caf\xe9=1'.
    argv = [sys.executable, "-m", "rapidfire_core.cli", "clone", "sweep", "2", "--set", b"caf\xe9=1"]
    proc = subprocess.run([*argv, "--experiment-path", str(root)], capture_output=True)
    assert proc.returncode == 2, proc.stderr
    assert b"not valid Unicode text" in proc.stderr and b"Traceback" not in proc.stderr
    assert CommandStore(root / "sweep" / "runs.db").all() == []
    assert RunStore(root / "sweep" / "runs.db").get_run(1)["status"] == "ONGOING"


def test_dashboard_on_a_busy_port_is_a_clear_error(root, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["dashboard", str(root), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_steering_commands_are_listed_in_help_and_cli_stays_light(root):
    # A fresh process: `rapidfire runs` must not import torch (it would take seconds).
    code = (
        "import sys; from rapidfire_core import cli; rc = cli.main(['runs', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported'; raise SystemExit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(root / "sweep")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ONGOING" in proc.stdout
    help_text = subprocess.run(
        [sys.executable, "-m", "rapidfire_core.cli", "--help"], capture_output=True, text=True
    )
    for name in ("runs", "stop", "resume", "delete", "clone", "dashboard"):
        assert name in help_text.stdout


@pytest.fixture
def training_process(tmp_path, tiny_model_dir):
    """A separate process training the real 3-run sweep (tests/dashboard/live_sweep.py)."""
    import os
    import time
    from pathlib import Path

    from .dashboard import live_sweep

    repo = Path(__file__).resolve().parents[1]
    log = open(tmp_path / "sweep.log", "w+")  # read back if the process fails to start
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.dashboard.live_sweep", str(tmp_path), tiny_model_dir],
        cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    exp_dir = tmp_path / live_sweep.NAME
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                live_sweep.wait_until_training(exp_dir, timeout=1)
                break
            except TimeoutError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(
                        f"the training process did not start (rc {proc.poll()}):\n{log.read()[-4000:]}"
                    )
        yield tmp_path, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
        log.close()


def test_end_to_end_against_a_training_process(training_process, capsys):
    root, proc = training_process
    name = "live-sweep"
    assert run_cli(root, "runs", name) == 0
    out = capsys.readouterr().out
    assert "a process is training it now" in out and out.count("ONGOING") == 3

    assert run_cli(root, "stop", name, "2") == 0
    assert "run 2 stopped" in capsys.readouterr().out
    store = RunStore(root / name / "runs.db")
    assert store.status(2) == RunStatus.STOPPED

    assert run_cli(root, "clone", name, "1", "--set", "learning_rate=5e-4", "--set", "r=8") == 0
    assert "new run 4" in capsys.readouterr().out
    clone = store.get_run(4)
    assert clone["parent_run_id"] == 1
    assert (clone["knobs"]["train.learning_rate"], clone["knobs"]["peft.r"]) == (5e-4, 8)

    assert run_cli(root, "clone", name, "1", "--set", "learning_rate=fast") == 1
    err = capsys.readouterr().err
    assert "learning_rate" in err and "expected float" in err

    # A clone key no encoder can write, stored as an older version stored it (submit refuses it
    # now): the training process fails that command alone, with the reason, and trains on.
    import sqlite3

    with sqlite3.connect(root / name / "runs.db") as db:
        cur = db.execute(
            "INSERT INTO commands(op, run_id, payload_json, source, status, created_at)"
            " VALUES ('clone', 1, ?, 'cli', 'pending', 0)",
            ('{"changes": {"caf\\udce9": 1}, "warm_start": false}',),
        )
    bad = CommandStore(root / name / "runs.db").wait(cur.lastrowid, timeout=60)
    assert bad.status == "failed" and "caf\\udce9" in bad.error
    assert RunStatus.FAILED not in [store.status(r) for r in (1, 2, 3, 4)]

    assert run_cli(root, "resume", name, "2") == 0
    assert run_cli(root, "delete", name, "3") == 0
    assert store.status(3) == RunStatus.DELETED
    # with every run parked, run_fit returns and the training process ends
    for run_id in ("1", "2", "4"):
        assert run_cli(root, "stop", name, run_id) == 0
    assert proc.wait(timeout=60) == 0
    assert [r["status"] for r in store.runs()] == ["STOPPED", "STOPPED", "DELETED", "STOPPED"]
    capsys.readouterr()
    assert run_cli(root, "resume", name, "1") == 3
    assert "no process is training experiment live-sweep now" in capsys.readouterr().err
