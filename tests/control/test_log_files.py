"""The experiment's log files: RapidFire AI's log types, appended as things happen."""

from __future__ import annotations

import logging

import pytest

from rapidfire_core.control.log_files import ExperimentLogs, TrainingLog, log_file_path


def test_log_types_name_the_files(tmp_path):
    assert log_file_path(tmp_path) == tmp_path / "logs" / "rapidfire.log"
    assert log_file_path(tmp_path, "experiment") == log_file_path(tmp_path, "MAIN")
    assert log_file_path(tmp_path, "training") == tmp_path / "logs" / "training.log"
    with pytest.raises(ValueError, match="log_type='gpu' is not a log of this experiment"):
        log_file_path(tmp_path, "gpu")


def test_logs_grow_line_by_line_and_survive_a_reopen(tmp_path):
    logs = ExperimentLogs(tmp_path)
    assert logs.path("main").exists() and logs.path("training").exists()
    logs.main.write("Experiment 'e' at /x")
    first = logs.path("main").stat().st_size
    logs.main.write("Done: 1 completed")
    assert logs.path("main").stat().st_size > first  # flushed at once: a tail -f sees it
    logs.close()
    again = ExperimentLogs(tmp_path)
    again.main.write("reopened")
    again.close()
    lines = logs.path("main").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "Experiment 'e' at /x",
        "Done: 1 completed",
        "reopened",
    ]


def test_training_log_records_runs_and_library_warnings(tmp_path):
    logs = ExperimentLogs(tmp_path)
    tracker = TrainingLog(logs.training)
    run_id = tracker.start_run("run-1", {"trainer_type": "SFT"})
    tracker.log_params(run_id, {"train.learning_rate": 0.001})
    tracker.log_metric_steps(run_id, [(1, {"loss": 2.5, "chunk": 1})])
    logging.getLogger("trl.trainer").warning("a TRL warning")
    logging.getLogger("trl.trainer").info("not this")
    tracker.end_run(run_id, "FINISHED")
    logs.close()
    logging.getLogger("trl.trainer").warning("after the experiment closed")
    text = logs.path("training").read_text()
    for expected in (
        "run-1 started",
        "run-1 params: train.learning_rate=0.001",
        "run-1 step 1: loss=2.5 chunk=1",
        "WARNING trl.trainer: a TRL warning",
        "run-1 ended: FINISHED",
    ):
        assert expected in text
    assert "not this" not in text and "after the experiment closed" not in text
