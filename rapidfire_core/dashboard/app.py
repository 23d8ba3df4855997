"""The dashboard's Starlette application: a JSON API over the stores and the static page.

    GET  /                                          the page (static/index.html)
    GET  /static/...                                its script and style sheet
    GET  /api/experiments                           {"root", "experiments": [{"name", "path", "updated_at",
                                                     "controller_alive"}]}
    GET  /api/experiments/{name}/runs               {"runs": [...], "varying_knobs": [...],
                                                     "controller_alive"}
    GET  /api/experiments/{name}/metrics?after=N&limit=M
                                                    {"rows": [[row_id, run_id, step, epoch, chunk, name,
                                                     value, ts], ...], "last": row id, "more": bool,
                                                     "store_id"}
    GET  /api/experiments/{name}/commands           {"commands": [...], "controller_alive"}
    GET  /api/experiments/{name}/commands/{id}      one command
    POST /api/experiments/{name}/commands           {"op", "run_id", "payload"} -> 201 the command, source
                                                    "dashboard"; 400 {"error"} for a malformed request

Metric polling is incremental: a client passes the last row id it has and gets only newer
rows (`more` says another page is waiting); a changed `store_id` means the experiment was
deleted and made again, so row ids start over. Non-finite numbers (a NaN loss) go out as null.

Security: with no token the app answers only requests whose Host is a loopback name (the
server binds 127.0.0.1; this also defeats DNS rebinding). With a token every request must
carry it: `Authorization: Bearer T`, or `?token=T` (the page link), or the cookie the page
load sets so the page's own assets load. State-changing requests must be JSON (a plain HTML
form from another site cannot send that) and, when the browser says where they come from
(Origin), come from this server. Nothing in a request is executed: bodies are parsed as JSON
and checked by `CommandStore.submit`. Experiment names must be plain children of the root.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rapidfire_core.control import CommandError, CommandStore, RunStore
from rapidfire_core.dashboard.experiments import DB_NAME, ExperimentNotFound, experiment_dir, list_experiments
from rapidfire_core.dashboard.summary import LatestMetrics, finite, run_rows

STATIC_DIR = Path(__file__).parent / "static"
TOKEN_COOKIE = "rapidfire_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
METRIC_PAGE = 20_000
MAX_BODY_BYTES = 1 << 20  # a command is a few hundred bytes
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none';"
        " base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(finite(content), status_code=status)


class _OpenExperiment:
    """The stores of one experiment, opened once per server (connections are thread-safe).

    `store_id` is the inode of runs.db: an experiment deleted and made again under the same
    name is a new file (the old one stays allocated while this connection holds it open, so
    the number differs), which the server reopens and the page sees as a reason to refetch."""

    def __init__(self, path: Path, store_id: int) -> None:
        self.store_id = store_id
        self.runs = RunStore(path / DB_NAME)
        self.commands = CommandStore(path / DB_NAME)
        self.latest = LatestMetrics()

    def close(self) -> None:
        self.runs.close()
        self.commands.close()


class DashboardState:
    """The root, the token and the experiments opened so far."""

    def __init__(self, root: Path, token: str | None) -> None:
        self.root = Path(root)
        self.token = token
        self._open: dict[str, _OpenExperiment] = {}
        self._lock = threading.Lock()

    def experiment(self, name: str) -> _OpenExperiment:
        try:
            path = experiment_dir(self.root, name)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except ExperimentNotFound as exc:
            raise ApiError(404, str(exc)) from None
        try:
            store_id = (path / DB_NAME).stat().st_ino
        except FileNotFoundError:
            raise ApiError(404, f"experiment {name!r} was removed") from None
        with self._lock:
            opened = self._open.get(name)
            if opened is None or opened.store_id != store_id:
                # A replaced experiment: the old stores are dropped, not closed, as another
                # request may still be reading them (the connections close when collected).
                opened = self._open[name] = _OpenExperiment(path, store_id)
            return opened

    def close(self) -> None:
        with self._lock:
            for opened in self._open.values():
                opened.close()
            self._open.clear()


# ---- access control --------------------------------------------------------------------------
def _presented_token(request: Request) -> tuple[str | None, str]:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), "header"
    if "token" in request.query_params:
        return request.query_params["token"], "query"
    return request.cookies.get(TOKEN_COOKIE), "cookie"


def _refusal(request: Request, token: str | None) -> tuple[int, str] | None:
    """(status, reason) if the request may not proceed, else None."""
    if token is None:
        try:
            host = (urlsplit("//" + request.headers.get("host", "")).hostname or "").lower()
        except ValueError:  # e.g. an unclosed "[::1"
            host = request.headers.get("host", "")
        if host not in LOOPBACK_HOSTS:
            return 403, f"this dashboard answers only loopback host names, not {host!r}"
    else:
        presented, _ = _presented_token(request)
        if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
            return 401, "missing or wrong token: open the URL the server printed (it holds ?token=...)"
    if request.method not in ("GET", "HEAD"):
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1].rstrip("/") != request.headers.get("host"):
            return 403, f"cross-origin request from {origin} refused"
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return 415, "send the request body as application/json"
    return None


class _Guard(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        state: DashboardState = request.app.state.dashboard
        refusal = _refusal(request, state.token)
        if refusal is not None:
            response: Response = JSONResponse({"error": refusal[1]}, status_code=refusal[0])
        else:
            response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response


# ---- endpoints -------------------------------------------------------------------------------
def _state(request: Request) -> DashboardState:
    return request.app.state.dashboard


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {text!r}") from None
    return max(low, min(high, value))


def page(request: Request) -> Response:
    response = FileResponse(STATIC_DIR / "index.html", media_type="text/html")
    state = _state(request)
    presented, how = _presented_token(request)
    if state.token is not None and how == "query":
        # The page's <script>/<link> loads cannot carry a header; the cookie vouches for them.
        response.set_cookie(TOKEN_COOKIE, presented, httponly=True, samesite="strict")
    return response


def experiments(request: Request) -> Response:
    state = _state(request)
    found = list_experiments(state.root)
    for exp in found:
        exp["controller_alive"] = state.experiment(exp["name"]).commands.controller_alive()
    return _json({"root": str(state.root.resolve()), "experiments": found})


def runs(request: Request) -> Response:
    opened = _state(request).experiment(request.path_params["name"])
    alive = opened.commands.controller_alive()
    body = run_rows(opened.runs, opened.latest, owner_alive=alive)
    body["controller_alive"] = alive
    body["store_id"] = opened.store_id
    return _json(body)


def metrics(request: Request) -> Response:
    opened = _state(request).experiment(request.path_params["name"])
    after = _int_param(request, "after", 0, 0, 2**62)
    limit = _int_param(request, "limit", METRIC_PAGE, 1, METRIC_PAGE)
    rows = opened.runs.metric_rows(after=after, limit=limit)
    last = rows[-1][0] if rows else after
    return _json({"rows": rows, "last": last, "more": len(rows) == limit, "store_id": opened.store_id})


def commands(request: Request) -> Response:
    opened = _state(request).experiment(request.path_params["name"])
    listed = [c.to_dict() for c in opened.commands.all()]
    return _json({"commands": listed, "controller_alive": opened.commands.controller_alive()})


def command(request: Request) -> Response:
    opened = _state(request).experiment(request.path_params["name"])
    try:
        return _json(opened.commands.get(int(request.path_params["command_id"])).to_dict())
    except (KeyError, ValueError):
        raise ApiError(404, f"no command with id {request.path_params['command_id']!r}") from None


async def _json_body(request: Request) -> Any:
    """The parsed body; 413 past MAX_BODY_BYTES (counted as it streams, whatever the headers say)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None


async def submit(request: Request) -> Response:
    opened = _state(request).experiment(request.path_params["name"])
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, 'expected a JSON object {"op": ..., "run_id": ..., "payload": {...}}')
    unknown = set(body) - {"op", "run_id", "payload"}
    if unknown:
        raise ApiError(400, f"unexpected field(s) {sorted(unknown)}: send op, run_id and payload")
    payload = body.get("payload") or {}
    if not isinstance(payload, dict):
        raise ApiError(400, f"payload must be an object, got {payload!r}")
    run_id = body.get("run_id")
    try:
        if isinstance(run_id, int) and not isinstance(run_id, bool):
            opened.runs.get_run(run_id)
        submitted = opened.commands.submit(body.get("op"), run_id, payload, source="dashboard")
    except CommandError as exc:
        raise ApiError(400, str(exc)) from None
    except KeyError:
        raise ApiError(400, f"no run with id {run_id} in this experiment") from None
    result = submitted.to_dict()
    result["controller_alive"] = opened.commands.controller_alive()
    return _json(result, status=201)


def _api_error(_request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):  # the router's 404 / 405, as JSON like every other answer
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
    return JSONResponse({"error": str(exc)}, status_code=getattr(exc, "status", 500))


def create_app(root: str | Path, token: str | None = None) -> Starlette:
    """The dashboard over the experiments directly under `root`. `token`: if set, every request
    must carry it (see the module docstring); if None, only loopback host names are answered."""
    if token is not None and not token:
        raise ValueError("token must be a non-empty string or None")
    exp = "/api/experiments/{name}"
    routes = [
        Route("/", page),
        Route("/api/experiments", experiments),
        Route(f"{exp}/runs", runs),
        Route(f"{exp}/metrics", metrics),
        Route(f"{exp}/commands", commands, methods=["GET"]),
        Route(f"{exp}/commands", submit, methods=["POST"]),
        Route(f"{exp}/commands/{{command_id}}", command),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    state = DashboardState(Path(root), token)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        state.close()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Guard)],
        exception_handlers={ApiError: _api_error, HTTPException: _api_error},
        lifespan=lifespan,
    )
    app.state.dashboard = state
    return app
