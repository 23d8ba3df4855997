"""RfDb: RapidFire AI's experiment database calls, answered from the experiments root."""

from __future__ import annotations

import pytest

from rapidfire_core.control import RunStore
from rapidfire_core.dashboard.experiments import ExperimentNotFound
from rapidfire_core.fit.db.rf_db import RfDb


def test_experiments_path_names_and_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("RF_EXPERIMENT_PATH", str(tmp_path))
    (tmp_path / "demo").mkdir()
    store = RunStore(tmp_path / "demo" / "runs.db")
    store.create_run("run-1", "SFT", {"peft.r": 8})
    store.close()
    db = RfDb()
    assert db.get_experiments_path("demo") == tmp_path.resolve()
    assert db.get_all_experiment_names() == ["demo"]
    runs = db.get_all_runs("demo")
    assert list(runs) == [1] and runs[1]["status"] == "NEW" and runs[1]["knobs"] == {"peft.r": 8}
    with pytest.raises(ExperimentNotFound, match="no experiment 'other'"):
        db.get_experiments_path("other")
