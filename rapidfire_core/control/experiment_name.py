"""Experiment names: one folder directly under the experiments root, nothing else.

`Experiment(name, experiment_path=R)` keeps everything it writes (run store, MLflow store,
adapters) in `R/name`, so a name must be a single path component that stays inside R on every
platform. Refused, with the reason:

- anything but a non-empty string; NUL or another control character;
- a path separator (`/`, and `\\` everywhere: it separates on Windows), so no absolute path;
- `.` and `..`, and a leading `.` (a hidden folder, which the dashboard does not list);
- leading or trailing whitespace, and a trailing `.` (Windows strips both: two names, one folder);
- a Windows reserved device name (`CON`, `PRN`, `AUX`, `NUL`, `COM1`-`COM9`, `LPT1`-`LPT9`, in
  any case, with or without an extension);
- more than 255 bytes in UTF-8 (the limit of a file name on common file systems).

Any other text is a fine name: unicode, spaces inside, `:` and the like on POSIX systems.
"""

from __future__ import annotations

import re
from typing import Any

_RESERVED = re.compile(r"^(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?$", re.IGNORECASE)
MAX_NAME_BYTES = 255


def check_experiment_name(name: Any) -> str:
    """`name` if it is a valid experiment name (module docstring); ValueError saying why not."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"experiment_name must be a non-empty string, got {name!r}")
    problem = _problem(name)
    if problem:
        raise ValueError(
            f"invalid experiment_name {name!r}: {problem}; it must be the name of one folder "
            "inside the experiments root (experiment_path)"
        )
    return name


def _problem(name: str) -> str | None:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "it contains a NUL or another control character"
    if "/" in name or "\\" in name:
        return "it contains a path separator ('/' or '\\')"
    if name in (".", ".."):
        return f"{name!r} is not a folder name"
    if name.startswith("."):
        return "it starts with '.' (a hidden folder)"
    if name != name.strip():
        return "it starts or ends with whitespace"
    if name.endswith("."):
        return "it ends with '.'"
    if _RESERVED.match(name):
        return "it is a reserved device name on Windows"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid unicode (a lone surrogate)"
    if size > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes in UTF-8"
    return None


__all__ = ["MAX_NAME_BYTES", "check_experiment_name"]
