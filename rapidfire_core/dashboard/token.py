"""The dashboard's access token: generated once per user, kept in a file only that user can read.

    ~/.rapidfire/dashboard_token        (or $RAPIDFIRE_HOME/dashboard_token), mode 0600,
                                        in a folder of mode 0700

Like Jupyter's `?token=`, the token is what separates this user's dashboard from every other
user of the machine: a server on 127.0.0.1 is reachable by all of them, and a dashboard can
stop, delete and clone runs of a process that runs as this user. `rapidfire dashboard` (and
`DashboardServer`) read the file on every start, so the URL it prints, a bookmark of it and
the cookie a browser keeps stay valid across restarts; deleting the file makes a new token.

The file is refused (TokenFileError, saying what to do) when another user could have read or
planted it: not a regular file (a symbolic link is not followed), not owned by this user, or
readable or writable by group or others. It is created with O_EXCL, so a file raced into
place by someone else is never taken for ours.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

HOME_ENV = "RAPIDFIRE_HOME"
TOKEN_FILE_NAME = "dashboard_token"
TOKEN_BYTES = 24  # 192 random bits, 32 URL-safe characters


class TokenFileError(OSError):
    """The token file exists but cannot be trusted or read; the message says how to fix it."""


def rapidfire_home() -> Path:
    """$RAPIDFIRE_HOME, else ~/.rapidfire: per-user settings (not a cache: nothing rebuildable)."""
    env = os.environ.get(HOME_ENV)
    return Path(env) if env else Path.home() / ".rapidfire"


def token_path() -> Path:
    return rapidfire_home() / TOKEN_FILE_NAME


def _check_private(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise TokenFileError(f"{path} is not a regular file; delete it and start the dashboard again")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise TokenFileError(
            f"{path} belongs to uid {info.st_uid}, not to you: another user may know this token. "
            "Delete it and start the dashboard again"
        )
    if info.st_mode & 0o077:
        raise TokenFileError(
            f"{path} is readable or writable by other users (mode {stat.S_IMODE(info.st_mode):o}): "
            f"the token may be known. Delete it (a new one is made) or `chmod 600 {path}`"
        )


def read_token(path: Path | None = None) -> str | None:
    """The token in the file (None if there is no file); TokenFileError if it is not private."""
    path = token_path() if path is None else path
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        raise TokenFileError(f"cannot open {path} ({exc.strerror}); delete it to make a new token") from None
    try:
        _check_private(fd, path)
        token = os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not token:
        raise TokenFileError(f"{path} is empty; delete it to make a new token")
    return token


def load_or_create_token(path: Path | None = None) -> str:
    """This user's dashboard token: read from `path` (default `token_path()`), or generated and
    written there (0600, folder 0700) the first time."""
    path = token_path() if path is None else path
    token = read_token(path)
    if token is not None:
        return token
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:  # another dashboard made it first: use theirs (checked like any other)
        return read_token(path) or token
    try:
        os.write(fd, (token + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return token
