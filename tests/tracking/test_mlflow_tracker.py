"""MLflow tracker limits: many params per run, many metrics per flush."""

from mlflow.tracking import MlflowClient

from rapidfire_core.tracking.mlflow_tracker import MLflowTracker, default_tracking_uri


def test_runs_with_more_params_and_metrics_than_one_mlflow_batch_allows(tmp_path):
    tracker = MLflowTracker("limits", default_tracking_uri(tmp_path))
    params = {f"train.knob_{i}": i for i in range(250)}  # MLflow takes at most 100 per call
    run_id = tracker.start_run("run-1", params, tags={"rapidfire.run_id": "1"})
    tracker.log_metric_steps(run_id, [(step, {f"m{k}": float(k) for k in range(30)}) for step in range(40)])
    tracker.end_run(run_id, "FINISHED")
    tracker.close()
    run = MlflowClient(default_tracking_uri(tmp_path)).get_run(run_id)
    assert len(run.data.params) == 250 and run.data.params["train.knob_249"] == "249"
    assert run.info.status == "FINISHED" and tracker.failed_writes == 0
    assert len(MlflowClient(default_tracking_uri(tmp_path)).get_metric_history(run_id, "m7")) == 40
