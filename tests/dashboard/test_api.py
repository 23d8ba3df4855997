"""The dashboard's JSON API against stores filled directly (no training, no browser)."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import pytest
from starlette.testclient import TestClient

from rapidfire_core.control import RunStatus
from rapidfire_core.control.run_store import MetricRecord
from rapidfire_core.dashboard.app import TOKEN_COOKIE, create_app
from rapidfire_core.dashboard.experiments import check_name
from rapidfire_core.dashboard.server import DashboardServer

from .fake_engine import make_experiment

LOCAL = "http://127.0.0.1:8765"


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
    with TestClient(create_app(root), base_url=LOCAL) as c:
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
    # DNS rebinding: a foreign name that resolves to 127.0.0.1 reaches a loopback server
    assert client.get("/api/experiments", headers={"host": "evil.test"}).status_code == 403
    assert client.get("/api/experiments", headers={"host": "localhost:8765"}).status_code == 200


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
        assert TOKEN_COOKIE in page.headers["set-cookie"] and "httponly" in page.headers["set-cookie"].lower()
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


def test_background_server_serves_real_http_and_refuses_open_hosts(root):
    with pytest.raises(ValueError, match="without a token"):
        DashboardServer(root, host="0.0.0.0")
    with DashboardServer(root) as server:
        assert server.port > 0
        with urllib.request.urlopen(server.url + "api/experiments/sweep/runs", timeout=5) as resp:
            assert len(json.loads(resp.read())["runs"]) == 2
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
