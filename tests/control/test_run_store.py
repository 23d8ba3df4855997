"""The run store: run life cycle and the (run, step) results frame."""

import math
import sqlite3
import threading

import pytest

from rapidfire_core.control import RunStatus, RunStore
from rapidfire_core.control.run_store import MetricRecord


def test_runs_and_metrics_round_trip(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    a = store.create_run("a", "SFT", {"peft.r": 8, "train.learning_rate": 1e-3})
    b = store.create_run("b", "SFT", {"peft.r": 32, "train.learning_rate": 1e-4})
    store.log_metric_records([MetricRecord(a, 1, 0.1, 1, {"loss": 2.0, "learning_rate": 1e-3})])
    store.log_metric_records([MetricRecord(a, 2, 0.2, 1, {"loss": 1.5})])
    store.log_metric_records([MetricRecord(a, 2, 0.2, 1, {"eval_loss": 1.7})])
    store.log_metric_records(
        [MetricRecord(b, 1, 0.1, 1, {"loss": 3.0, "flag": True})]
    )  # bools are not metrics
    store.update_run(a, status=RunStatus.ONGOING)
    store.update_run(a, status=RunStatus.COMPLETED, global_step=2)
    store.update_run(b, status=RunStatus.FAILED, error="ValueError: bad")

    results = store.results_frame()
    assert list(results[["run_id", "step"]].itertuples(index=False, name=None)) == [(a, 1), (a, 2), (b, 1)]
    row = results[(results.run_id == a) & (results.step == 2)].iloc[0]
    assert row["loss"] == 1.5 and row["eval_loss"] == 1.7 and row["chunk"] == 1
    assert math.isnan(results[(results.run_id == a) & (results.step == 1)].iloc[0]["eval_loss"])
    assert "flag" not in results.columns

    runs = store.runs_frame().set_index("run_id")
    assert runs.loc[a, "status"] == "COMPLETED" and runs.loc[a, "peft.r"] == 8
    assert runs.loc[b, "status"] == "FAILED" and runs.loc[b, "error"] == "ValueError: bad"
    assert store.status(b) is RunStatus.FAILED


def test_store_survives_reopen_and_concurrent_writers(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    run = store.create_run("a", "DPO", {})

    def writer(offset):
        for step in range(50):
            store.log_metric_records([MetricRecord(run, offset + step, None, None, {"loss": float(step)})])

    threads = [threading.Thread(target=writer, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    reopened = RunStore(tmp_path / "runs.db")
    assert len(reopened.results_frame()) == 200


def test_unknown_column_is_rejected(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    run = store.create_run("a", "SFT", {})
    with pytest.raises(KeyError, match="bogus"):
        store.update_run(run, bogus=1)


def test_a_read_only_store_never_writes(tmp_path):
    RunStore(tmp_path / "runs.db").create_run("a", "SFT", {})
    reader = RunStore(tmp_path / "runs.db", read_only=True)
    assert [r["run_id"] for r in reader.runs()] == [1]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.create_run("b", "SFT", {})
    with pytest.raises(sqlite3.OperationalError):
        RunStore(tmp_path / "missing.db", read_only=True).runs()
    assert not (tmp_path / "missing.db").exists()


def test_a_read_only_store_reads_a_file_from_before_the_added_columns(tmp_path):
    path = tmp_path / "runs.db"
    RunStore(path).create_run("a", "SFT", {"peft.r": 4})
    with sqlite3.connect(path) as db:  # as the first release wrote it
        for column in ("fingerprint", "sweep", "interrupted"):
            db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    before = path.read_bytes()
    run = RunStore(path, read_only=True).runs()[0]
    assert (run["run_id"], run["sweep"], run["interrupted"]) == (1, 1, 0)
    assert path.read_bytes() == before
