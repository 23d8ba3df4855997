"""TensorBoard: one run directory of event files per run, scalars at their steps."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rapidfire_core.tracking.tensorboard_tracker import TensorBoardTracker


def test_each_run_writes_its_own_event_files(tmp_path):
    tracker = TensorBoardTracker(tmp_path / "tb")
    for name in ("run-1", "run-2"):
        tracker.start_run(name, {"train.learning_rate": 1e-3}, tags={"rapidfire.run_id": name[-1]})
    tracker.log_params("run-1", {"train.fp16": False, "typed.train.fp16": True})
    tracker.log_metric_steps("run-1", [(1, {"loss": 2.0, "chunk": 1}), (2, {"loss": 1.5, "chunk": 1})])
    tracker.log_metric_steps("run-2", [(1, {"loss": 3.0})])
    tracker.end_run("run-1", "FINISHED")
    tracker.end_run("run-2", "KILLED")  # stopped ...
    tracker.reopen_run("run-2")  # ... and resumed: a new event file in the same directory
    tracker.log_metric_steps("run-2", [(2, {"loss": 2.5})])
    tracker.close()

    one = EventAccumulator(str(tmp_path / "tb" / "run-1")).Reload()
    assert [(e.step, e.value) for e in one.Scalars("loss")] == [(1, 2.0), (2, 1.5)]
    assert "params/text_summary" in one.Tags()["tensors"]
    two = EventAccumulator(str(tmp_path / "tb" / "run-2")).Reload()
    assert [(e.step, e.value) for e in two.Scalars("loss")] == [(1, 3.0), (2, 2.5)]
    assert len(list((tmp_path / "tb" / "run-2").glob("events.out.tfevents.*"))) == 2
    assert tracker.ui_hint() == f"tensorboard --logdir {tmp_path / 'tb'}"
