"""W&B (offline mode): one W&B run per engine run; params, metrics at their steps, resume into the
same run, end statuses -- read back from the run files W&B wrote."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")

from wandb.proto import wandb_internal_pb2  # noqa: E402

from rapidfire_core.control.log_files import ExperimentLogs, TrainingLog  # noqa: E402
from rapidfire_core.tracking.selection import build_trackers  # noqa: E402
from rapidfire_core.tracking.wandb_tracker import STATUS_KEY, WandbTracker, wandb_run_id  # noqa: E402

_BLOCK = 32 * 1024  # W&B's run file is a LevelDB-style log: 32 KiB blocks of framed chunks
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
    """The protobuf Records of one `.wandb` run file, in the order W&B wrote them."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, pending = 7, b""  # 7-byte file header: ":W&B", magic, version
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == _FULL:
            payload = chunk
        elif kind in (_FIRST, _MIDDLE):
            pending += chunk
            continue
        elif kind == _LAST:
            payload, pending = pending + chunk, b""
        else:  # zero fill after the last record
            break
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _items(update) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in update}


def _read_part(path: Path) -> dict:
    """One run file: run id, start time, config, [(step, metrics)], summary updates, exit codes."""
    part = {"config": {}, "history": [], "summary": {}, "exits": []}
    for record in _records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            part.update(
                run_id=record.run.run_id,
                project=record.run.project,
                name=record.run.display_name,
                start=record.run.start_time.ToNanoseconds(),
            )
            part["config"].update(_items(record.run.config.update))
        elif kind == "config":
            part["config"].update(_items(record.config.update))
        elif kind == "history":
            values = _items(record.history.item)
            step = values.pop("_step")
            part["history"].append((step, {k: v for k, v in values.items() if not k.startswith("_")}))
        elif kind == "summary":
            part["summary"].update(_items(record.summary.update))
        elif kind == "exit":
            part["exits"].append(record.exit.exit_code)
    return part


def _read_runs(root: Path) -> dict[str, dict]:
    """W&B run id -> everything its files under `root` hold, parts joined in start order.

    Offline, each (re)start of a run writes its own file (`wandb sync` joins them by id); W&B's
    service writes asynchronously, so it is shut down first (as at process exit)."""
    wandb.teardown()
    parts = sorted(
        (_read_part(p) for p in root.glob("wandb/offline-run-*/run-*.wandb")), key=lambda p: p["start"]
    )
    runs: dict[str, dict] = {}
    for part in parts:
        run = runs.setdefault(part["run_id"], {"config": {}, "history": [], "summary": {}, "exits": []})
        run.update(project=part["project"], name=part["name"])
        for key in ("config", "summary"):
            run[key].update(part[key])
        run["history"] += part["history"]
        run["exits"] += part["exits"]
    return runs


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_runs_params_metrics_and_resume_read_back(tmp_path: Path, offline) -> None:
    tracker = WandbTracker("exp", tmp_path / "exp")
    for name in ("run-1", "run-2"):
        tracker.start_run(name, {"train.learning_rate": 1e-3}, tags={"rapidfire.run_id": name[-1]})
    tracker.log_params("run-1", {"train.learning_rate": 2e-3, "train.fp16": False})  # effective values
    tracker.log_metric_steps("run-1", [(1, {"loss": 2.0, "chunk": 1}), (2, {"loss": 1.5, "chunk": 1})])
    tracker.log_metric_steps("run-2", [(1, {"loss": 3.0, "is_best": True})])  # a bool is no metric
    tracker.end_run("run-1", "FINISHED")
    tracker.end_run("run-2", "KILLED")  # stopped ...
    tracker.reopen_run("run-2")  # ... and resumed: the same W&B run goes on
    tracker.log_metric_steps("run-2", [(2, {"loss": 2.5})])
    tracker.end_run("run-2", "FINISHED")
    tracker.close()

    runs = _read_runs(tmp_path / "exp")
    one, two = runs.pop(wandb_run_id("exp", "run-1")), runs.pop(wandb_run_id("exp", "run-2"))
    assert runs == {}
    assert (one["project"], one["name"], two["name"]) == ("exp", "run-1", "run-2")
    assert one["config"]["train.learning_rate"] == 2e-3 and one["config"]["train.fp16"] is False
    assert one["config"]["tag.rapidfire.run_id"] == "1"
    assert one["history"] == [(1, {"loss": 2.0, "chunk": 1.0}), (2, {"loss": 1.5, "chunk": 1.0})]
    assert two["history"] == [(1, {"loss": 3.0}), (2, {"loss": 2.5})]
    assert two["config"]["train.learning_rate"] == 1e-3  # the resumed part carries the config again
    assert one["summary"][STATUS_KEY] == "FINISHED" and one["exits"] == [0]
    assert two["summary"][STATUS_KEY] == "FINISHED" and two["exits"] == [0, 0]
    assert "wandb sync" in tracker.ui_hint() and "exp" in tracker.ui_hint()


def test_failed_and_deleted_runs_keep_their_status(tmp_path: Path, offline, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "shared-project")
    tracker = WandbTracker("exp2", tmp_path / "exp2")
    tracker.start_run("run-1", {})
    tracker.log_metric_steps("run-1", [(1, {"loss": 1.0})])
    tracker.end_run("run-1", "FAILED")
    tracker.start_run("run-2", {})
    tracker.end_run("run-2", "KILLED")
    tracker.delete_run("run-2")  # after it stopped: re-opened only to record the deletion
    tracker.close()

    runs = _read_runs(tmp_path / "exp2")
    failed, deleted = runs[wandb_run_id("exp2", "run-1")], runs[wandb_run_id("exp2", "run-2")]
    assert failed["project"] == "shared-project"  # ids carry the experiment: no clash in a shared project
    assert failed["summary"][STATUS_KEY] == "FAILED" and failed["exits"] == [1]
    assert deleted["summary"][STATUS_KEY] == "DELETED"


def test_without_credentials_it_logs_offline_instead_of_prompting(tmp_path: Path, monkeypatch) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no W&B settings
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.warns(RuntimeWarning, match="no credentials"):
        tracker = WandbTracker("exp", tmp_path / "exp")
    tracker.start_run("run-1", {"train.learning_rate": 1e-3})
    tracker.log_metric_steps("run-1", [(1, {"loss": 2.0})])
    tracker.end_run("run-1", "FINISHED")
    tracker.close()
    run = _read_runs(tmp_path / "exp")[wandb_run_id("exp", "run-1")]
    assert run["history"] == [(1, {"loss": 2.0})]
    assert "wandb sync" in tracker.ui_hint()


def test_selected_by_name_writes_under_the_experiment(tmp_path: Path, offline) -> None:
    logs = ExperimentLogs(tmp_path)
    trackers = build_trackers(["wandb"], "exp", tmp_path, "unused", TrainingLog(logs.training))
    assert trackers.primary is None
    assert trackers.start_run("run-1", {"trainer_type": "SFT"}) == "run-1"
    trackers.log_metric_steps("run-1", [(1, {"loss": 2.0})])
    trackers.end_run("run-1", "FINISHED")
    trackers.close()
    logs.close()
    run = _read_runs(tmp_path)[wandb_run_id("exp", "run-1")]
    assert run["config"]["trainer_type"] == "SFT" and run["history"] == [(1, {"loss": 2.0})]


def test_an_experiment_logs_to_wandb_what_it_logs_to_mlflow(
    tmp_path: Path, offline, tiny_model_dir, create_tiny_model
) -> None:
    """Experiment(trackers=["mlflow", "wandb"]): each run's W&B config holds its MLflow params, and
    every MLflow metric has the same (step, value) history in W&B."""
    from mlflow.tracking import MlflowClient

    from rapidfire_core import Experiment
    from rapidfire_core.automl import List, RFGridSearch
    from rapidfire_core.demo.data import support_dataset
    from tests.small_configs import sft_two_learning_rates

    exp = Experiment("parity", experiment_path=tmp_path, verbose=False, trackers=["mlflow", "wandb"])
    exp.run_fit(
        RFGridSearch(List([sft_two_learning_rates(tiny_model_dir)]), trainer_type="SFT"),
        create_tiny_model,
        support_dataset(n=8),
        support_dataset(n=4, seed=9),
        num_chunks=2,
    )
    assert exp.get_runs_info()["status"].tolist() == ["COMPLETED"] * 2
    client = MlflowClient(tracking_uri=exp.tracking_uri)
    mlflow_runs = client.search_runs([client.get_experiment_by_name("parity").experiment_id])
    exp.end()

    wandb_runs = _read_runs(tmp_path / "parity")
    assert len(wandb_runs) == len(mlflow_runs) == 2
    for mlflow_run in mlflow_runs:
        run = wandb_runs[wandb_run_id("parity", mlflow_run.info.run_name)]
        assert run["summary"][STATUS_KEY] == "FINISHED"
        config = run["config"]
        for key, text in mlflow_run.data.params.items():
            assert key in config, key
            truncated = text.endswith("...") and str(config[key]).startswith(
                text[:-3]
            )  # MLflow's value limit
            assert str(config[key]) == text or truncated, key
        assert {"loss", "learning_rate", "eval_loss", "chunk"} <= set(mlflow_run.data.metrics)
        for key in mlflow_run.data.metrics:
            expected = [(m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, key)]
            logged = [(step, metrics[key]) for step, metrics in run["history"] if key in metrics]
            assert sorted(logged) == sorted(expected), key
