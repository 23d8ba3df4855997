"""Where each run trains and how busy each executor is: `<experiment>/executors.json`.

Written by the controller about once a second while executors train (atomically: a reader
sees a whole file), read by `rapidfire runs` and the dashboard:

    {"updated": <unix time>,
     "executors": [{"index": 0, "node": "host-a", "device": "cuda:0 (NVIDIA H100)", "pid": 123,
                    "alive": true, "busy_share": 0.93}, ...],
     "runs": {"1": 0, "2": 1, ...}}          # run id -> the executor that trains it (or did last)

busy_share: the fraction of wall time since the executor started that it spent training (its
turns), as measured inside it. The file is absent for single-device runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VIEW_FILE = "executors.json"


def write_view(experiment_path: Path, executors: Sequence[Any]) -> None:
    """Write the view of `executors` (`ray_executor.RayExecutor`s, lost ones included: `alive`);
    each run is where a live executor holds it, else where it was last."""
    now = time.monotonic()
    where = {}
    for executor in sorted(executors, key=lambda e: e.alive):  # the live ones' runs win
        where |= dict.fromkeys(executor.held, executor.index)
    view = {
        "updated": time.time(),
        "executors": [
            {
                "index": e.index,
                "node": e.where.get("node"),
                "device": e.where.get("device"),
                "pid": e.where.get("pid"),
                "alive": e.alive,
                "busy_share": round(min(e.busy_seconds / max(now - e.started, 1e-9), 1.0), 4),
            }
            for e in executors
        ],
        "runs": {str(run_id): index for run_id, index in sorted(where.items())},
    }
    path = Path(experiment_path) / VIEW_FILE
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(view, indent=1))
    os.replace(tmp, path)


def read_view(experiment_path: Path) -> dict[str, Any] | None:
    """The view, or None for an experiment trained on one device (or an unreadable file)."""
    try:
        return json.loads((Path(experiment_path) / VIEW_FILE).read_text())
    except (OSError, ValueError):
        return None


def run_locations(view: dict[str, Any] | None) -> dict[int, str]:
    """{run id: "node/device"} from a view (empty without one)."""
    if not view:
        return {}
    executors = {e["index"]: e for e in view.get("executors", [])}
    out = {}
    for run_id, index in view.get("runs", {}).items():
        executor = executors.get(index, {})
        out[int(run_id)] = f"{executor.get('node', '?')}/{executor.get('device', '?')}#{index}"
    return out


__all__ = ["VIEW_FILE", "read_view", "run_locations", "write_view"]
