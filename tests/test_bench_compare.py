"""`make bench` saves a run as JSON and `make bench-compare` fails on a regression beyond the
noise band only: against a baseline 100x faster it fails, against one 100x slower it passes.

One quick benchmark (the state pool's swap of a rank-16 run to the host, one round) through the Makefile's
own targets; `-o install` keeps make from installing (this suite already runs in the venv).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _make(target: str, storage: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        "make", "-o", "install", target, f"PY={sys.executable}", f"BENCH_STORAGE={storage}",
        "BENCH_PATHS=benchmarks/bench_state_swap.py",
        "PYTEST_ARGS=-k 'test_swap and 16-cpu-pool-to_host' -p no:cacheprovider", *extra,
    ]  # fmt: skip
    env = {**os.environ, "RF_BENCH_ROUNDS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _scale_baseline(saved: Path, factor: float) -> None:
    """Multiply every timing of the saved run by ``factor`` (a faster or slower baseline)."""
    report = json.loads(saved.read_text())
    for bench in report["benchmarks"]:
        for key in ("min", "max", "mean", "median"):
            bench["stats"][key] *= factor
    saved.write_text(json.dumps(report))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make (the targets under test)")
@pytest.mark.skipif(
    importlib.util.find_spec("rapidfire_core._C") is None, reason="the pool needs the compiled module"
)
def test_bench_saves_json_and_compare_fails_only_beyond_the_noise_band(tmp_path):
    storage = tmp_path / "benchmarks"
    missing = _make("bench-compare", storage)
    assert missing.returncode != 0 and "no saved run" in missing.stdout + missing.stderr

    saved_run = _make("bench", storage)
    assert saved_run.returncode == 0, saved_run.stdout[-3000:] + saved_run.stderr[-3000:]
    (saved,) = storage.glob("*/*.json")
    names = [b["name"] for b in json.loads(saved.read_text())["benchmarks"]]
    assert names == ["test_swap[16-cpu-pool-to_host]"]

    _scale_baseline(saved, 0.01)  # the baseline was 100x faster: a regression far beyond 20%
    regressed = _make("bench-compare", storage)
    assert regressed.returncode != 0
    assert "regressed" in (regressed.stdout + regressed.stderr).lower()

    _scale_baseline(saved, 100 * 100)  # now 100x slower than this run: no regression
    improved = _make("bench-compare", storage)
    assert improved.returncode == 0, improved.stdout[-3000:] + improved.stderr[-3000:]
    assert len(list(storage.glob("*/*.json"))) == 1  # a comparison saves nothing over the baseline
