"""Trackers forwards each call to every backend under that backend's own id."""

from __future__ import annotations

import logging

import pytest

from rapidfire_core.tracking.fanout import Trackers


class Recorder:
    """A backend that records the calls it gets (ids prefixed with its name)."""

    def __init__(self, name: str, fail_on: str | None = None) -> None:
        self.name, self.fail_on, self.calls = name, fail_on, []
        self.experiment_id, self.tracking_uri = f"{name}-exp", f"{name}://"

    def __getattr__(self, method):
        if method.startswith("__"):
            raise AttributeError(method)

        def call(*args):
            if method == self.fail_on:
                raise RuntimeError(f"{self.name} is down")
            self.calls.append((method, *args))
            return f"{self.name}:{args[0]}" if method == "start_run" else None

        return call


def test_each_backend_gets_its_own_run_id_and_the_primary_names_the_run():
    mlflow, board = Recorder("mlflow"), Recorder("tensorboard")
    trackers = Trackers({"mlflow": mlflow, "tensorboard": board}, primary="mlflow")
    run_id = trackers.start_run("run-1", {"p": 1})
    assert run_id == "mlflow:run-1" and trackers.experiment_id == "mlflow-exp"
    trackers.log_params(run_id, {"q": 2})
    trackers.log_metric_steps(run_id, [(1, {"loss": 1.0})])
    trackers.end_run(run_id, "FINISHED")
    assert board.calls == [
        ("start_run", "run-1", {"p": 1}, None),
        ("log_params", "tensorboard:run-1", {"q": 2}),
        ("log_metric_steps", "tensorboard:run-1", [(1, {"loss": 1.0})]),
        ("end_run", "tensorboard:run-1", "FINISHED"),
    ]
    assert mlflow.calls[-1] == ("end_run", "mlflow:run-1", "FINISHED")


def test_a_run_another_process_started_goes_to_the_primary_only():
    mlflow, board = Recorder("mlflow"), Recorder("tensorboard")
    Trackers({"mlflow": mlflow, "tensorboard": board}, primary="mlflow").end_run("old-id", "KILLED")
    assert mlflow.calls == [("end_run", "old-id", "KILLED")] and board.calls == []


def test_a_failing_secondary_backend_is_logged_and_skipped(caplog):
    mlflow, board = Recorder("mlflow"), Recorder("tensorboard", fail_on="log_metric_steps")
    trackers = Trackers({"mlflow": mlflow, "tensorboard": board}, primary="mlflow")
    run_id = trackers.start_run("run-1", {})
    with caplog.at_level(logging.WARNING):
        trackers.log_metric_steps(run_id, [(1, {"loss": 1.0})])
    assert mlflow.calls[-1][0] == "log_metric_steps"
    assert "tensorboard tracker: log_metric_steps failed: RuntimeError: tensorboard is down" in caplog.text


def test_the_primary_must_be_a_backend():
    with pytest.raises(ValueError, match="primary tracker 'mlflow'"):
        Trackers({"tensorboard": Recorder("tensorboard")}, primary="mlflow")
