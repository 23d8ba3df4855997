"""Which trackers an experiment uses: the trackers argument, else RapidFire AI's RF_*_ENABLED switches."""

from __future__ import annotations

from pathlib import Path

import pytest

from rapidfire_core.control.log_files import ExperimentLogs, TrainingLog
from rapidfire_core.tracking.selection import build_trackers, chosen_trackers, tensorboard_dir


def test_mlflow_alone_by_default():
    assert chosen_trackers(None, environ={}) == ["mlflow"]


def test_switches_turn_backends_on_and_off():
    env = {"RF_MLFLOW_ENABLED": "false", "RF_TENSORBOARD_ENABLED": "TRUE", "RF_TRACKIO_ENABLED": "1"}
    assert chosen_trackers(None, environ=env) == ["tensorboard", "trackio"]
    assert chosen_trackers(None, environ={"RF_WANDB_ENABLED": "yes"}) == ["mlflow", "wandb"]


def test_rapidfire_colab_backend_variable_picks_mlflow_tensorboard_or_both():
    assert chosen_trackers(None, environ={"RF_TRACKING_BACKEND": "tensorboard"}) == ["tensorboard"]
    assert chosen_trackers(None, environ={"RF_TRACKING_BACKEND": "Both"}) == ["mlflow", "tensorboard"]
    env = {"RF_TRACKING_BACKEND": "mlflow", "RF_TRACKIO_ENABLED": "true"}
    assert chosen_trackers(None, environ=env) == ["mlflow", "trackio"]
    with pytest.raises(ValueError, match="RF_TRACKING_BACKEND='wandb': use one of"):
        chosen_trackers(None, environ={"RF_TRACKING_BACKEND": "wandb"})


def test_the_argument_overrides_the_switches():
    env = {"RF_TENSORBOARD_ENABLED": "true"}
    assert chosen_trackers(["trackio", "mlflow"], environ=env) == ["mlflow", "trackio"]
    assert chosen_trackers([], environ=env) == []


@pytest.mark.parametrize(
    "trackers, env, error, text",
    [
        (["neptune"], {}, ValueError, "unknown ['neptune']"),
        ("tensorboard", {}, TypeError, "a list of names"),
        (None, {"RF_TRACKIO_ENABLED": "maybe"}, ValueError, "RF_TRACKIO_ENABLED='maybe'"),
    ],
)
def test_bad_choices_are_refused(trackers, env, error, text):
    with pytest.raises(error) as caught:
        chosen_trackers(trackers, environ=env)
    assert text in str(caught.value)


def test_tensorboard_dir_follows_rapidfires_variable(tmp_path):
    assert tensorboard_dir("exp", tmp_path / "exp", environ={}) == tmp_path / "exp" / "tensorboard_logs"
    env = {"RF_TENSORBOARD_LOG_DIR": str(tmp_path / "tb")}
    assert tensorboard_dir("exp", tmp_path / "exp", environ=env) == tmp_path / "tb" / "exp"


def test_without_mlflow_the_run_name_is_the_run_id(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("RF_TENSORBOARD_LOG_DIR", raising=False)
    logs = ExperimentLogs(tmp_path)
    trackers = build_trackers(["tensorboard"], "exp", tmp_path, "unused", TrainingLog(logs.training))
    assert trackers.primary is None and trackers.experiment_id is None
    assert trackers.start_run("run-1", {"trainer_type": "SFT"}) == "run-1"
    trackers.log_metric_steps("run-1", [(1, {"loss": 2.0})])
    trackers.end_run("run-1", "FINISHED")
    trackers.close()
    logs.close()
    assert list((tmp_path / "tensorboard_logs" / "run-1").glob("events.out.tfevents.*"))
    assert "run-1 step 1: loss=2" in (tmp_path / "logs" / "training.log").read_text()
