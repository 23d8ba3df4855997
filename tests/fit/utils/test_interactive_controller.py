"""The notebook panel: what it shows of an experiment's runs, and the commands its buttons write."""

from __future__ import annotations

import pytest

from rapidfire_core.control import CommandStore, RunStore
from rapidfire_core.control.run_store import MetricRecord
from rapidfire_core.fit.utils.interactive_controller import InteractiveController

ipywidgets = pytest.importorskip("ipywidgets", reason="the test extra installs ipywidgets")


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """An experiment folder with two runs: run 1 ONGOING at step 3 of 8 with a loss, run 2 FAILED."""
    root = tmp_path / "rapidfire_experiments"
    monkeypatch.setenv("RF_EXPERIMENT_PATH", str(root))
    path = root / "sweep"
    path.mkdir(parents=True)
    store = RunStore(path / "runs.db")
    first = store.create_run("run-1", "SFT", {"train.max_steps": 8, "train.learning_rate": 1e-3})
    second = store.create_run("run-2", "SFT", {"train.max_steps": 8, "train.learning_rate": -1.0})
    store.update_run(first, status="ONGOING", global_step=3)
    store.update_run(second, status="FAILED", error="ConfigError: learning_rate must be >= 0")
    store.log_metric_records([MetricRecord(first, 3, 0.5, 1, {"loss": 2.5})])
    store.close()
    return path


def test_rows_and_table_show_status_progress_latest_loss_and_errors(experiment):
    panel = InteractiveController(dispatcher_url="http://127.0.0.1:8081")  # the latest experiment
    assert panel.experiment_dir() == experiment.resolve()
    rows = panel.rows()
    assert [(r["run_id"], r["status"], r["step"], r["max_steps"], r["loss"]) for r in rows] == [
        (1, "ONGOING", 3, 8, 2.5),
        (2, "FAILED", 0, 8, None),
    ]
    table = panel.table_html(rows)
    assert "<b>sweep</b>" in table and "3/8" in table and "learning_rate must be &gt;= 0" in table
    panel.close()


def test_buttons_write_the_same_commands_as_the_python_api(experiment):
    panel = InteractiveController(experiment=experiment, refresh_seconds=0)
    assert panel.display() is None  # outside a notebook IPython prints the widget's repr
    parts = panel._widgets
    assert panel.widget is parts["box"] and parts["run"].value == 1
    parts["Stop"].click()
    parts["changes"].value = '{"learning_rate": 1e-4}'
    parts["warm"].value = True
    parts["Clone"].click()
    parts["changes"].value = "{not json"
    parts["Clone"].click()
    assert "Clone failed: JSONDecodeError" in parts["status"].value
    commands = CommandStore(experiment / "runs.db")
    sent = [(c.op, c.run_id, c.payload, c.source) for c in commands.all()]
    commands.close()
    assert sent == [
        ("stop", 1, {}, "python"),
        ("clone", 1, {"changes": {"learning_rate": 1e-4}, "warm_start": True}, "python"),
    ]
    panel.close()


def test_without_an_experiment_the_panel_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("RF_EXPERIMENT_PATH", str(tmp_path / "empty"))
    panel = InteractiveController()
    assert panel.rows() == [] and "no experiment yet" in panel.table_html()
    assert panel.stop(1) == "no experiment to steer yet"
