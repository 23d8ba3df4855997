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
                                                    "dashboard"; 400 {"error"} for a malformed request,
                                                    403 for a clone edit that can load code (below)

Metric polling is incremental: a client passes the last row id it has and gets only newer
rows (`more` says another page is waiting); a changed `store_id` means the experiment was
deleted and made again, so row ids start over. Non-finite numbers (a NaN loss) go out as null.

Security (docs/security.md): with a token (the default of `DashboardServer` and `rapidfire
dashboard`) every request must carry it: `Authorization: Bearer T`, or `?token=T` (the page
link), or the cookie the page load sets so the page's own assets load. With no token (the
user opted out) the app answers only requests whose Host is a loopback name (this also defeats
DNS rebinding). State-changing requests must be JSON (a plain HTML form from another site
cannot send that) and, when the browser says where they come from (Origin), come from this
server. Nothing in a request is executed: bodies are parsed as JSON and checked by
`CommandStore.submit`; a clone edit that can load code (`control.code_edits`) is refused
unless the app was made with `allow_code_edits`. Experiment names must be plain children of
the root; a child that is a symbolic link out of the root is refused.

GET requests never write: they read runs.db through read-only connections. Commands are
written through a separate connection opened at the first POST, refused (403) when runs.db is
a symbolic link. A runs.db that cannot be read is listed with "unreadable" and its endpoints
answer 422; a busy database (another process holds it past the 30 s timeout) answers 503.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import sqlite3
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
from rapidfire_core.control.code_edits import code_loading_changes
from rapidfire_core.dashboard.experiments import (
    DB_NAME,
    ExperimentNotFound,
    experiment_dir,
    list_experiments,
    read_only_reason,
    refused_reason,
)
from rapidfire_core.dashboard.summary import LatestMetrics, finite, run_rows

STATIC_DIR = Path(__file__).parent / "static"
TOKEN_COOKIE = "rapidfire_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
METRIC_PAGE = 20_000
MAX_BODY_BYTES = 1 << 20  # a command is a few hundred bytes
TOKEN_COOKIE_SECONDS = 30 * 24 * 3600  # a browser reopens the page without the link for a month
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


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a string that UTF-8 cannot encode (a lone
    surrogate stored by an older version) goes out as "\\ud800" instead of failing the reply."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def _json(content: Any, status: int = 200) -> JSONResponse:
    return _AsciiJSONResponse(finite(content), status_code=status)


class _OpenExperiment:
    """The stores of one experiment, opened once per server (connections are thread-safe).

    Reads go through read-only connections (a GET never writes); `writer()` opens the one
    connection POSTs write commands through, unless runs.db is a symbolic link.

    `store_id` is the inode of runs.db: an experiment deleted and made again under the same
    name is a new file (the old one stays allocated while this connection holds it open, so
    the number differs), which the server reopens and the page sees as a reason to refetch."""

    def __init__(self, path: Path, store_id: int) -> None:
        self.path, self.store_id = path, store_id
        self.runs = RunStore(path / DB_NAME, read_only=True)
        self.commands = CommandStore(path / DB_NAME, read_only=True)
        self.latest = LatestMetrics()
        self._writer: CommandStore | None = None
        self._lock = threading.Lock()

    def writer(self) -> CommandStore:
        refusal = read_only_reason(self.path)
        if refusal is not None:
            raise ApiError(403, refusal)
        with self._lock:
            if self._writer is None:
                self._writer = CommandStore(self.path / DB_NAME)
            return self._writer

    def close(self) -> None:
        self.runs.close()
        self.commands.close()
        if self._writer is not None:
            self._writer.close()


class DashboardState:
    """The root, the token and the experiments opened so far."""

    def __init__(self, root: Path, token: str | None, allow_code_edits: bool = False) -> None:
        self.root = Path(root)
        self.token = token
        self.allow_code_edits = allow_code_edits
        self._open: dict[str, _OpenExperiment] = {}
        self._lock = threading.Lock()

    def experiment(self, name: str) -> _OpenExperiment:
        try:
            path = experiment_dir(self.root, name)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except ExperimentNotFound as exc:
            raise ApiError(404, str(exc)) from None
        refused = refused_reason(self.root, path)
        if refused is not None:
            raise ApiError(403, refused)
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
        # The page's <script>/<link> loads cannot carry a header; the cookie vouches for them,
        # and lets the browser reopen the page without the link.
        response.set_cookie(
            TOKEN_COOKIE, presented, max_age=TOKEN_COOKIE_SECONDS, httponly=True, samesite="strict"
        )
    return response


def experiments(request: Request) -> Response:
    state = _state(request)
    found = list_experiments(state.root)
    for exp in found:
        exp["controller_alive"] = False
        if "refused" in exp or "unreadable" in exp:
            continue
        try:
            exp["controller_alive"] = state.experiment(exp["name"]).commands.controller_alive()
        except ApiError:  # removed since it was listed
            continue
        except sqlite3.DatabaseError as exc:  # one bad file must not hide the others
            exp["unreadable"] = f"{DB_NAME} cannot be read: {exc}"
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
        # KeyError also for an id past SQLite's 64-bit integers (10**26)
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
    except RecursionError:  # e.g. 100,000 nested [ (the parser recurses once per level)
        raise ApiError(400, "the request body is nested too deeply") from None


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
    writer = opened.writer()
    try:
        if isinstance(run_id, int) and not isinstance(run_id, bool):
            opened.runs.get_run(run_id)
        if body.get("op") == "clone" and not _state(request).allow_code_edits:
            _refuse_code_edits(payload.get("changes"))
        submitted = writer.submit(body.get("op"), run_id, payload, source="dashboard")
    except CommandError as exc:
        raise ApiError(400, str(exc)) from None
    except (KeyError, OverflowError):  # OverflowError: a run id past SQLite's 64-bit integers
        raise ApiError(400, f"no run with id {run_id} in this experiment") from None
    result = submitted.to_dict()
    result["controller_alive"] = opened.commands.controller_alive()
    return _json(result, status=201)


def _refuse_code_edits(changes: Any) -> None:
    if not isinstance(changes, dict):
        return  # CommandStore.submit names what is wrong with it
    found = code_loading_changes(changes)
    if found:
        listed = "; ".join(f"{key} {reason}" for key, reason in found.items())
        raise ApiError(
            403,
            f"refused: these edits can make the training process load code or touch files: {listed}. "
            "Make them from the notebook or `rapidfire clone`, or start the dashboard with "
            "--allow-code-edits (see docs/security.md)",
        )


def _api_error(_request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):  # the router's 404 / 405, as JSON like every other answer
        return _json({"error": exc.detail}, status=exc.status_code)
    return _json({"error": str(exc)}, status=getattr(exc, "status", 500))


def _database_error(_request: Request, exc: Exception) -> Response:
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return _json({"error": f"{DB_NAME} is busy, try again: {exc}"}, status=503)
    return _json({"error": f"{DB_NAME} cannot be read: {exc}"}, status=422)


def create_app(root: str | Path, token: str | None, allow_code_edits: bool = False) -> Starlette:
    """The dashboard over the experiments directly under `root`.

    `token`: every request must carry it (see the module docstring); None only when the user
    opted out of it (then only loopback host names are answered). `allow_code_edits`: accept
    clone edits that can load code (`control.code_edits`), refused otherwise."""
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
    state = DashboardState(Path(root), token, allow_code_edits)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        state.close()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Guard)],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _api_error,
            sqlite3.DatabaseError: _database_error,
        },
        lifespan=lifespan,
    )
    app.state.dashboard = state
    return app
