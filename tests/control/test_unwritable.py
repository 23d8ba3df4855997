"""A run store whose disk refuses writes raises one error that names the disk."""

from __future__ import annotations

import sqlite3

import pytest

from rapidfire_core.control import CommandStore, RunStore, faults
from rapidfire_core.control.run_store import MetricRecord
from rapidfire_core.control.unwritable import StoreUnwritable, as_unwritable, unwritable_cause


def test_sqlite_full_becomes_an_error_naming_the_file_system(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    store.create_run("a", "SFT", {})
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL path
    records = [MetricRecord(1, step, 0.0, 1, {"loss": 1.0, "x" * 400: 2.0}) for step in range(300)]
    with pytest.raises(StoreUnwritable) as caught:
        store.log_metric_records(records)
    message = str(caught.value)
    assert str(tmp_path / "runs.db") in message and "database or disk is full" in message
    assert "free of" in message and isinstance(caught.value, sqlite3.OperationalError)
    assert "Training stopped" in str(caught.value.training_stopped())


def test_the_store_full_fault_refuses_every_write_from_its_count_on(tmp_path, monkeypatch):
    monkeypatch.setattr(faults, "_ARMED", {"store_full": 2})
    monkeypatch.setattr(faults, "_SEEN", {})
    commands = CommandStore(tmp_path / "runs.db")
    first = commands.submit("stop", 1)
    for _ in range(2):  # sticky, like a full disk
        with pytest.raises(StoreUnwritable):
            commands.submit("stop", 2)
    monkeypatch.setattr(faults, "_ARMED", {})
    assert [c.command_id for c in commands.all()] == [first.command_id]  # nothing half-written


def test_other_sqlite_errors_are_left_as_they_are(tmp_path):
    busy = sqlite3.OperationalError("database is locked")
    assert as_unwritable(busy, tmp_path / "runs.db") is busy
    with pytest.raises(sqlite3.OperationalError, match="no such table") as caught:
        RunStore(tmp_path / "runs.db")._db.execute("SELECT * FROM absent_table")
    assert not isinstance(caught.value, StoreUnwritable)


def test_the_cause_is_found_through_a_chain():
    lost = StoreUnwritable("the run store x cannot be written")
    try:
        try:
            raise lost
        except StoreUnwritable:
            raise RuntimeError("a run failed while recording its failure") from None
    except RuntimeError as outer:
        assert unwritable_cause(outer) is lost  # raised while handling it: the store is still lost
    try:
        try:
            raise lost
        except StoreUnwritable as exc:
            raise RuntimeError("while handling") from exc
    except RuntimeError as outer:
        assert unwritable_cause(outer) is lost
    assert unwritable_cause(ValueError("x")) is None
