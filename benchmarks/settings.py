"""Settings every benchmark reads from the environment (so `make bench` can run a small check)."""

from __future__ import annotations

import os


def bench_rounds(default: int) -> int:
    """Rounds per benchmark: RF_BENCH_ROUNDS if set (e.g. 1 for a quick check), else ``default``."""
    return int(os.environ.get("RF_BENCH_ROUNDS", default))
