"""The dashboard's JSON API against stores filled directly (no training, no browser)."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rapidfire_core.control import RunStatus
from rapidfire_core.control.run_store import MetricRecord
from rapidfire_core.dashboard.app import TOKEN_COOKIE, create_app
from rapidfire_core.dashboard.experiments import check_name
from rapidfire_core.dashboard.server import DashboardServer
from rapidfire_core.dashboard.token import read_token

from .fake_engine import make_experiment

LOCAL = "http://127.0.0.1:8765"
TOKEN = "t0ken-for-tests"


@pytest.fixture
def root(tmp_path):
    runs, commands = make_experiment(
        tmp_path, "sweep", [{"train.learning_rate": 1e-3}, {"train.learning_rate": 1e-4}]
    )
    runs.log_metric_records(
        [
            MetricRecord(1, 1, 0.1, 1, {"loss": 2.5, "learning_rate": 1e-3}),
            MetricRecord(1, 2, 0.2, 1, {"loss": 2.0, "grad_norm": math.nan}),
            MetricRecord(2, 1, 0.1, 1, {"loss": 2.7}),
            MetricRecord(1, 2, 0.2, 1, {"eval_loss": 2.2}),
        ]
    )
    (tmp_path / "not-an-experiment").mkdir()
    make_experiment(tmp_path, ".hidden", [{}])
    return tmp_path


@pytest.fixture
def client(root):
    """The API as the page uses it: with the token (required by default)."""
    headers = {"authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(root, token=TOKEN), base_url=LOCAL, headers=headers) as c:
        yield c


@pytest.fixture
def open_client(root):
    """A dashboard whose user opted out of the token (loopback host names only)."""
    with TestClient(create_app(root, token=None), base_url=LOCAL) as c:
        yield c


def test_experiments_lists_dirs_with_a_runs_db(client, root):
    body = client.get("/api/experiments").json()
    assert body["root"] == str(root.resolve())
    assert [e["name"] for e in body["experiments"]] == ["sweep"]
    assert body["experiments"][0]["controller_alive"] is False


def test_runs_carry_varying_knobs_latest_metrics_and_progress(client, root):
    body = client.get("/api/experiments/sweep/runs").json()
    assert body["varying_knobs"] == ["train.learning_rate"]
    assert body["controller_alive"] is False
    first, second = body["runs"]
    assert (first["run_id"], first["status"], first["max_steps"]) == (1, "NEW", 400)
    # latest = the value at the highest step; NaN goes out as null (valid JSON)
    assert first["latest"] == {"loss": 2.0, "learning_rate": 1e-3, "grad_norm": None, "eval_loss": 2.2}
    assert second["latest"] == {"loss": 2.7}
    assert first["knobs"]["train.learning_rate"] == 1e-3


def test_metrics_are_polled_incrementally(client, root):
    body = client.get("/api/experiments/sweep/metrics").json()
    assert len(body["rows"]) == 6 and body["more"] is False
    last = body["last"]
    row_id, run_id, step, epoch, chunk, name, value, ts = body["rows"][0]
    assert (run_id, step, epoch, chunk, name, value) == (1, 1, 0.1, 1, "loss", 2.5)
    assert any(r[5] == "grad_norm" and r[6] is None for r in body["rows"])

    again = client.get(f"/api/experiments/sweep/metrics?after={last}").json()
    assert (again["rows"], again["last"], again["more"]) == ([], last, False)
    assert again["store_id"] == body["store_id"]

    from rapidfire_core.control import RunStore

    RunStore(root / "sweep" / "runs.db").log_metric_records([MetricRecord(2, 2, 0.2, 1, {"loss": 2.4})])
    new = client.get(f"/api/experiments/sweep/metrics?after={last}").json()
    assert [r[1:3] + r[5:7] for r in new["rows"]] == [[2, 2, "loss", 2.4]]

    page = client.get("/api/experiments/sweep/metrics?after=0&limit=4").json()
    assert len(page["rows"]) == 4 and page["more"] is True and page["last"] == page["rows"][-1][0]
    assert client.get("/api/experiments/sweep/metrics?after=x").status_code == 400


def test_submitted_commands_are_stored_with_source_dashboard(client, root):
    resp = client.post("/api/experiments/sweep/commands", json={"op": "stop", "run_id": 2})
    assert resp.status_code == 201, resp.text
    stop = resp.json()
    assert (stop["op"], stop["run_id"], stop["source"], stop["status"]) == ("stop", 2, "dashboard", "pending")
    assert stop["controller_alive"] is False

    clone = client.post(
        "/api/experiments/sweep/commands",
        json={
            "op": "clone",
            "run_id": 1,
            "payload": {"changes": {"learning_rate": 5e-4}, "warm_start": True},
        },
    ).json()
    assert clone["payload"] == {"changes": {"learning_rate": 5e-4}, "warm_start": True}

    history = client.get("/api/experiments/sweep/commands").json()["commands"]
    assert [c["command_id"] for c in history] == [stop["command_id"], clone["command_id"]]
    one = client.get(f"/api/experiments/sweep/commands/{clone['command_id']}").json()
    assert one["op"] == "clone" and one["status"] == "pending"
    assert client.get("/api/experiments/sweep/commands/999").status_code == 404


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"op": "explode", "run_id": 1}, "unknown op"),
        ({"op": "stop", "run_id": "1"}, "run_id must be an int"),
        ({"op": "stop", "run_id": 7}, "no run with id 7"),
        ({"op": "stop", "run_id": 1, "payload": {"now": True}}, "unexpected payload field"),
        ({"op": "clone", "run_id": 1, "payload": {"changes": [1]}}, "changes must be a dict"),
        ({"op": "clone", "run_id": 1, "payload": {"warm_start": "yes"}}, "warm_start must be true or false"),
        ({"op": "stop", "run_id": 1, "source": "cli"}, "unexpected field"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_malformed_commands_are_rejected_with_400(client, body, says):
    resp = client.post("/api/experiments/sweep/commands", json=body)
    assert resp.status_code == 400
    assert says in resp.json()["error"]
    assert client.get("/api/experiments/sweep/commands").json()["commands"] == []


def test_a_body_that_is_not_json_is_refused(client):
    resp = client.post(
        "/api/experiments/sweep/commands", content=b"op=stop", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
    # a plain form post (what a hostile page can send cross-site without a preflight)
    form = client.post("/api/experiments/sweep/commands", data={"op": "stop", "run_id": "1"})
    assert form.status_code == 415


def test_cross_origin_writes_and_foreign_host_names_are_refused(client):
    resp = client.post(
        "/api/experiments/sweep/commands",
        json={"op": "stop", "run_id": 1},
        headers={"origin": "http://evil.test"},
    )
    assert resp.status_code == 403
    same = client.post(
        "/api/experiments/sweep/commands", json={"op": "stop", "run_id": 1}, headers={"origin": LOCAL}
    )
    assert same.status_code == 201


def test_without_a_token_only_loopback_host_names_are_answered(open_client):
    assert open_client.get("/api/experiments").status_code == 200
    # DNS rebinding: a foreign name that resolves to 127.0.0.1 reaches a loopback server
    assert open_client.get("/api/experiments", headers={"host": "evil.test"}).status_code == 403
    assert open_client.get("/api/experiments", headers={"host": "localhost:8765"}).status_code == 200


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "%2E%2E", "a%2Fb", "..%5Csweep"])
def test_names_that_are_not_plain_children_of_the_root_are_rejected(client, name):
    resp = client.get(f"/api/experiments/{name}/runs")
    assert resp.status_code in (400, 404)
    assert "runs" not in resp.json()


def test_check_name_allows_only_plain_child_names():
    assert check_name("sft-sweep 2") == "sft-sweep 2"
    for bad in ("", ".", "..", ".x", "a/b", "a\\b", "../x", "x\0"):
        with pytest.raises(ValueError, match="invalid experiment name"):
            check_name(bad)


def test_unknown_experiment_is_404_naming_the_known_ones(client):
    resp = client.get("/api/experiments/nope/runs")
    assert resp.status_code == 404 and "sweep" in resp.json()["error"]


def test_token_is_required_on_every_request_when_set(root):
    with TestClient(create_app(root, token="s3cret"), base_url="http://10.0.0.5:8765") as c:
        for path in ("/", "/static/app.js", "/api/experiments", "/api/experiments/sweep/runs"):
            assert c.get(path).status_code == 401, path
        assert c.get("/api/experiments", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/experiments", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/experiments?token=s3cret").status_code == 200
        post = c.post(
            "/api/experiments/sweep/commands",
            json={"op": "stop", "run_id": 1},
            headers={"authorization": "Bearer s3cret"},
        )
        assert post.status_code == 201
        page = c.get("/?token=s3cret")
        assert page.status_code == 200 and "<html" in page.text
        cookie = page.headers["set-cookie"].lower()
        assert TOKEN_COOKIE in cookie and "httponly" in cookie and "max-age" in cookie
        # the page's own assets load with the cookie the page load set
        assert c.get("/static/app.js").status_code == 200


def test_page_and_assets_are_served_with_protective_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="runs-table"' in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("app.js", "charts.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert "http" not in client.get("/").text.split("<body>")[0].replace("http-equiv", "")  # no CDN


def _get(url: str, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
        return json.loads(resp.read())


def test_background_server_requires_the_users_token_by_default_even_on_loopback(root):
    with pytest.raises(ValueError, match="without a token"):
        DashboardServer(root, host="0.0.0.0", require_token=False)
    with DashboardServer(root) as server:
        assert server.port > 0 and server.host == "127.0.0.1"
        token = read_token()
        assert token and server.url.endswith(f"/?token={token}")
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(server.url.split("?")[0] + "api/experiments/sweep/runs")
        assert err.value.code == 401
        assert len(_get(server.url.split("?")[0] + "api/experiments/sweep/runs", token)["runs"]) == 2
    with DashboardServer(root) as again:  # a restart keeps the token: the link still opens it
        assert again.token == token
    with DashboardServer(root, require_token=False) as opted_out:
        assert opted_out.token is None
        assert len(_get(opted_out.url + "api/experiments/sweep/runs")["runs"]) == 2
    with DashboardServer(root, token="t0k") as server:
        assert server.url.endswith("/?token=t0k")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url.split("?")[0] + "api/experiments", timeout=5)
        assert err.value.code == 401


def test_runs_status_changes_show_up(client, root):
    from rapidfire_core.control import RunStore

    RunStore(root / "sweep" / "runs.db").update_run(1, status=RunStatus.ONGOING, global_step=2, chunks_done=1)
    first = client.get("/api/experiments/sweep/runs").json()["runs"][0]
    assert (first["status"], first["global_step"], first["chunks_done"]) == ("ONGOING", 2, 1)


def test_oversized_bodies_are_refused(client):
    big = json.dumps({"op": "clone", "run_id": 1, "payload": {"changes": {"x": "a" * (2 << 20)}}})
    resp = client.post(
        "/api/experiments/sweep/commands", content=big, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413


def test_an_experiment_made_again_under_the_same_name_is_reread(client, root):
    import shutil

    first = client.get("/api/experiments/sweep/metrics").json()
    shutil.rmtree(root / "sweep")
    runs, _ = make_experiment(root, "sweep", [{"peft.r": 4}])
    runs.log_metric_records([MetricRecord(1, 1, 0.1, 1, {"loss": 9.0})])
    listed = client.get("/api/experiments/sweep/runs").json()
    assert [r["knobs"]["peft.r"] for r in listed["runs"]] == [4]
    assert listed["runs"][0]["latest"] == {"loss": 9.0}
    again = client.get("/api/experiments/sweep/metrics").json()
    assert again["store_id"] != first["store_id"]
    assert [r[5:7] for r in again["rows"]] == [["loss", 9.0]]


def test_clone_edits_that_can_load_code_are_refused_unless_allowed(client, root):
    changes = {"learning_rate": 1e-4, "model_name": "/tmp/evil", "model_kwargs.trust_remote_code": True}
    body = {"op": "clone", "run_id": 1, "payload": {"changes": changes}}
    resp = client.post("/api/experiments/sweep/commands", json=body)
    assert resp.status_code == 403
    error = resp.json()["error"]
    assert (
        "model_name" in error and "model_kwargs.trust_remote_code" in error and "learning_rate" not in error
    )
    assert "--allow-code-edits" in error
    assert client.get("/api/experiments/sweep/commands").json()["commands"] == []
    safe = {"op": "clone", "run_id": 1, "payload": {"changes": {"learning_rate": 1e-4, "peft.r": 4}}}
    assert client.post("/api/experiments/sweep/commands", json=safe).status_code == 201

    allowing = create_app(root, token=TOKEN, allow_code_edits=True)
    with TestClient(allowing, base_url=LOCAL, headers={"authorization": f"Bearer {TOKEN}"}) as c:
        assert c.post("/api/experiments/sweep/commands", json=body).status_code == 201


def _tables(path: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_get_requests_never_write_a_runs_db_that_is_a_symbolic_link(client, root, tmp_path_factory):
    import sqlite3

    other = tmp_path_factory.mktemp("elsewhere") / "someone_elses.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes(text TEXT)")
    (root / "linked").mkdir()
    (root / "linked" / "runs.db").symlink_to(other)

    listed = {e["name"]: e for e in client.get("/api/experiments").json()["experiments"]}
    assert "symbolic link" in listed["linked"]["read_only"]
    for path in ("runs", "metrics", "commands", "commands/1"):
        assert client.get(f"/api/experiments/linked/{path}").status_code in (404, 422), path
    assert _tables(other) == {"notes"}  # none of the engine's tables were written into it
    post = client.post("/api/experiments/linked/commands", json={"op": "stop", "run_id": 1})
    assert post.status_code == 403 and "symbolic link" in post.json()["error"]
    assert _tables(other) == {"notes"}


def test_an_experiment_folder_linked_from_outside_the_root_is_refused(client, root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    make_experiment(outside, "private", [{}])
    (root / "peek").symlink_to(outside / "private")
    listed = {e["name"]: e for e in client.get("/api/experiments").json()["experiments"]}
    assert "outside the root" in listed["peek"]["refused"]
    resp = client.get("/api/experiments/peek/runs")
    assert resp.status_code == 403 and "outside the root" in resp.json()["error"]


def test_a_corrupt_runs_db_is_listed_as_unreadable_and_the_others_still_are(client, root):
    (root / "broken").mkdir()
    (root / "broken" / "runs.db").write_bytes(b"not a database " * 400)
    body = client.get("/api/experiments")
    assert body.status_code == 200
    listed = {e["name"]: e for e in body.json()["experiments"]}
    assert set(listed) == {"sweep", "broken"} and "unreadable" not in listed["sweep"]
    assert "cannot be read" in listed["broken"]["unreadable"]
    resp = client.get("/api/experiments/broken/runs")
    assert resp.status_code == 422 and "cannot be read" in resp.json()["error"]


def test_absurd_ids_and_deep_bodies_are_client_errors(client):
    assert client.get(f"/api/experiments/sweep/commands/{10**26}").status_code == 404
    assert client.get("/api/experiments/sweep/commands/-5").status_code == 404
    resp = client.post("/api/experiments/sweep/commands", json={"op": "stop", "run_id": 10**26})
    assert resp.status_code == 400
    deep = b"[" * 100_000 + b"]" * 100_000
    resp = client.post(
        "/api/experiments/sweep/commands", content=deep, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and "nested too deeply" in resp.json()["error"]
    nested = '{"op": "clone", "run_id": 1, "payload": {"changes": {"x": ' + "[" * 5000 + "]" * 5000 + "}}}"
    resp = client.post(
        "/api/experiments/sweep/commands", content=nested, headers={"content-type": "application/json"}
    )
    assert 400 <= resp.status_code < 500


def test_a_key_that_is_not_unicode_is_refused_and_the_history_stays_readable(client, root):
    body = '{"op": "clone", "run_id": 1, "payload": {"changes": {"\\ud800": 1}}}'
    resp = client.post(
        "/api/experiments/sweep/commands", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and "not valid Unicode" in resp.json()["error"]
    assert client.get("/api/experiments/sweep/commands").json()["commands"] == []
    # a row such a key left in an experiment by an older version still lists
    import sqlite3

    with sqlite3.connect(root / "sweep" / "runs.db") as db:
        db.execute(
            "INSERT INTO commands(op, run_id, payload_json, source, status, created_at)"
            " VALUES ('clone', 1, ?, 'dashboard', 'pending', 0)",
            ('{"changes": {"\\ud800": 1}, "warm_start": false}',),
        )
    listed = client.get("/api/experiments/sweep/commands")
    assert listed.status_code == 200
    assert list(listed.json()["commands"][0]["payload"]["changes"]) == ["\ud800"]


def test_a_folder_the_os_refuses_is_listed_as_unreadable(client, root, monkeypatch):
    from rapidfire_core.dashboard import experiments

    (root / "locked").mkdir()
    real = experiments.is_experiment_dir

    def is_experiment_dir(path):  # what a folder of mode 700 owned by another user does (as non-root)
        if path.name == "locked":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(experiments, "is_experiment_dir", is_experiment_dir)
    listed = {e["name"]: e for e in client.get("/api/experiments").json()["experiments"]}
    assert "Permission denied" in listed["locked"]["unreadable"] and "unreadable" not in listed["sweep"]
