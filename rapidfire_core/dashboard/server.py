"""Serving the dashboard with uvicorn: `serve` blocks (the CLI), `DashboardServer` runs it in
a thread (tests, notebooks).

Both require a token by default, on every address, loopback included (any user of the machine
can reach 127.0.0.1): the caller's `token`, else this user's token from its private file
(`dashboard.token`, made on first use). `require_token=False` opts out, for a single-user
machine; it is allowed on a loopback address only.

The listening socket is bound here, before uvicorn starts, so a busy port is a clear
`OSError` for the caller rather than a log line and an exit inside uvicorn, and port 0 picks
a free port whose number is known at once.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import uvicorn

from rapidfire_core.dashboard.app import create_app
from rapidfire_core.dashboard.token import load_or_create_token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def dashboard_url(host: str, port: int, token: str | None) -> str:
    """The URL to open (a wildcard address is shown as this machine's name)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={quote(token, safe='')}" if token else "")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def server_token(host: str, token: str | None, require_token: bool) -> str | None:
    """The token the server will require: `token`, else (require_token) this user's token from
    its file, else None. ValueError for no token on a non-loopback address."""
    if token is not None:
        return token
    if require_token:
        return load_or_create_token()
    if not is_loopback(host):
        raise ValueError(
            f"refusing to serve on {host} without a token: anyone who can reach it could stop or delete "
            "runs. Drop the opt-out (a token is made for you), or bind 127.0.0.1."
        )
    return None


def _server(root: str | Path, token: str | None, allow_code_edits: bool) -> uvicorn.Server:
    # Access logs off: the page polls every second.
    app = create_app(root, token, allow_code_edits=allow_code_edits)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    return uvicorn.Server(config)


def serve(
    root: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    announce: Callable[[str], None] | None = None,
    require_token: bool = True,
    allow_code_edits: bool = False,
) -> None:
    """Serve the dashboard over the experiments under `root` until interrupted (Ctrl-C).

    The token: module docstring (`server_token`). `allow_code_edits`: accept clone edits that
    can load code (`control.code_edits`). OSError if the port cannot be bound; `announce(url)`
    is called once it is (port 0: the one picked), with the token in the URL."""
    token = server_token(host, token, require_token)
    sock = _bind(host, port)
    if announce is not None:
        announce(dashboard_url(host, sock.getsockname()[1], token))
    _server(root, token, allow_code_edits).run(sockets=[sock])


class DashboardServer:
    """The dashboard in a background thread: `start()` returns once it accepts connections.

    with DashboardServer(root) as server:
        print(server.url)
    """

    def __init__(
        self,
        root: str | Path,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        require_token: bool = True,
        allow_code_edits: bool = False,
    ) -> None:
        """The token and `allow_code_edits`: as for `serve`."""
        self.token = server_token(host, token, require_token)
        self.root, self.host, self.port = Path(root), host, port
        self.allow_code_edits = allow_code_edits
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return dashboard_url(self.host, self.port, self.token)

    def start(self, timeout: float = 10.0) -> DashboardServer:
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = _server(self.root, self.token, self.allow_code_edits)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="rapidfire-dashboard", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
