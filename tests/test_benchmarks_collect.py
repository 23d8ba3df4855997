"""`make bench` cannot break silently: every benchmark module collects, and every benchmark is one
that `--benchmark-only` runs (marked `bench`, timed through the `benchmark` fixture).

Collection only (no benchmark runs, no marker filter), in a subprocess so the benchmarks' imports and sys.path
edits stay out of this test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COLLECT = """
import json, sys
import pytest

class Recorder:
    items = []
    def pytest_collection_finish(self, session):
        for item in session.items:
            Recorder.items.append({
                "nodeid": item.nodeid,
                "fixtures": list(getattr(item, "fixturenames", [])),
                "markers": sorted({m.name for m in item.iter_markers()}),
            })

rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-m", "", "benchmarks"],
                 plugins=[Recorder()])
print("@@" + json.dumps({"rc": int(rc), "items": Recorder.items}))
"""


def _collect() -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", COLLECT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    marker = [line for line in done.stdout.splitlines() if line.startswith("@@")]
    assert marker, f"collection printed no report:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads(marker[-1][2:])
    assert report["rc"] == 0, (
        f"benchmark collection failed (pytest exit {report['rc']}):\n{done.stdout[-4000:]}"
    )
    return report


def test_every_benchmark_collects_and_is_timed_by_pytest_benchmark():
    report = _collect()
    modules = {item["nodeid"].split("::")[0] for item in report["items"]}
    expected = {f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert modules == expected, f"bench modules with no benchmark: {sorted(expected - modules)}"
    untimed = [item["nodeid"] for item in report["items"] if "benchmark" not in item["fixtures"]]
    assert not untimed, f"skipped by --benchmark-only (no `benchmark` fixture): {untimed}"
    unmarked = [item["nodeid"] for item in report["items"] if "bench" not in item["markers"]]
    assert not unmarked, f"not marked `bench`: {unmarked}"
