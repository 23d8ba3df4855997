"""A new SQLite MLflow store is a copy of the migrated template, and is the store MLflow builds."""

import sqlite3

from mlflow.tracking import MlflowClient

from rapidfire_core.tracking.mlflow_template import seed_sqlite_store, sqlite_path, template_path
from rapidfire_core.tracking.mlflow_tracker import MLflowTracker, default_tracking_uri


def _schema(db) -> tuple[dict, set, list]:
    """{table: its (column, type, not null, primary key) rows}, index names, alembic revision.
    Not the DDL text: how MLflow spells a CREATE TABLE depends on what the process imported."""
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = {
            name: sorted((c[1], c[2], c[3], c[5]) for c in conn.execute(f'PRAGMA table_info("{name}")'))
            for name in names
        }
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return columns, indexes, revision


def test_seeded_store_has_the_schema_mlflow_builds_and_its_own_default_experiment(tmp_path):
    cache = tmp_path / "cache"
    built_by_mlflow = default_tracking_uri(tmp_path / "plain")
    (tmp_path / "plain").mkdir()
    MlflowClient(built_by_mlflow).search_experiments()  # MLflow runs its migrations here

    seeded = default_tracking_uri(tmp_path / "seeded")
    assert seed_sqlite_store(seeded, cache) is True
    assert template_path(cache).is_file()
    assert _schema(sqlite_path(seeded)) == _schema(sqlite_path(built_by_mlflow))

    client = MlflowClient(seeded)
    default = client.get_experiment("0")
    assert default.name == "Default"
    assert default.artifact_location == MlflowClient(built_by_mlflow).get_experiment("0").artifact_location


def test_a_tracker_on_a_new_experiment_folder_logs_into_a_seeded_store(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPIDFIRE_CACHE", str(tmp_path / "cache"))
    uri = default_tracking_uri(tmp_path / "exp")
    tracker = MLflowTracker("seeded", uri)
    assert (tmp_path / "cache" / "mlflow").is_dir()  # the template was built for this store
    run_id = tracker.start_run("run-1", {"lr": 1e-3})
    tracker.log_metric_steps(run_id, [(1, {"loss": 2.0}), (2, {"loss": 1.5})])
    tracker.end_run(run_id, "FINISHED")
    tracker.close()
    client = MlflowClient(uri)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [2.0, 1.5]
    assert client.get_experiment(tracker.experiment_id).name == "seeded"


def test_an_existing_store_or_another_backend_is_left_alone(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a copy")
    assert seed_sqlite_store(f"sqlite:///{db}", tmp_path / "cache") is False
    assert db.read_bytes() == b"not a copy"
    assert seed_sqlite_store("http://localhost:5000", tmp_path / "cache") is False
    assert seed_sqlite_store("sqlite:///:memory:", tmp_path / "cache") is False
    assert not (tmp_path / "cache").exists()


def test_an_unusable_cache_falls_back_to_mlflows_own_initialisation(tmp_path):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    uri = default_tracking_uri(tmp_path / "exp")
    assert seed_sqlite_store(uri, blocked) is False
    assert not sqlite_path(uri).exists()
    (tmp_path / "exp").mkdir()
    assert MlflowClient(uri).get_experiment("0").name == "Default"
