"""The folder where rapidfire_core keeps what it builds once per machine (demo model, MLflow
store template): ``$RAPIDFIRE_CACHE``, else ``~/.cache/rapidfire_core``."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RAPIDFIRE_CACHE"


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "rapidfire_core"
