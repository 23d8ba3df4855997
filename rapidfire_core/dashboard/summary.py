"""What the dashboard and `rapidfire runs` show about runs: the knobs that tell runs apart and
each run's latest metrics, read from a `RunStore` (no torch, no web framework)."""

from __future__ import annotations

import json
import math
import threading
import warnings
from pathlib import Path
from typing import Any

from rapidfire_core.cluster.executors_view import read_view, run_locations
from rapidfire_core.control import RunStore
from rapidfire_core.control.checkpoints import CheckpointStore, run_checkpoint_dir

# Metrics shown as columns wherever a run is one line (the charts show every metric).
HEADLINE_METRICS = ("loss", "eval_loss", "reward")
_PAGE = 50_000


def finite(obj: Any) -> Any:
    """`obj` with NaN / inf replaced by None, through dicts, lists and tuples: JSON has no such
    numbers (browsers reject them) and a diverged run logs them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def varying_knobs(runs: list[dict[str, Any]]) -> list[str]:
    """Knob names whose value is not the same in every run, in first-seen order (a knob
    missing from some runs varies). One run: none vary, so its own knobs are the whole story."""
    names: list[str] = []
    for run in runs:
        names.extend(k for k in run["knobs"] if k not in names)
    missing = object()
    return [k for k in names if len({json.dumps(r["knobs"].get(k, missing), default=repr) for r in runs}) > 1]


class LatestMetrics:
    """Each run's latest value of each metric, kept current by reading only the rows logged
    since the last `update` (`RunStore.metric_rows(after=...)`). "Latest" is the value at the
    highest step; at equal steps the later row wins (a chunk-end eval after a user eval)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_row_id = 0
        self._latest: dict[int, dict[str, tuple[int, float]]] = {}

    def update(self, store: RunStore) -> None:
        with self._lock:
            while True:
                rows = store.metric_rows(after=self.last_row_id, limit=_PAGE)
                for row_id, run_id, step, _epoch, _chunk, name, value, _ts in rows:
                    per_run = self._latest.setdefault(run_id, {})
                    seen = per_run.get(name)
                    if seen is None or step >= seen[0]:
                        per_run[name] = (step, value)
                    self.last_row_id = row_id
                if len(rows) < _PAGE:
                    return

    def last_step(self, run_id: int) -> int:
        """The highest step at which the run logged a metric (0 before it logged anything)."""
        with self._lock:
            return max((step for step, _value in self._latest.get(run_id, {}).values()), default=0)

    def of(self, run_id: int) -> dict[str, float]:
        """{metric name: latest value} of one run ({} before it logged anything)."""
        with self._lock:
            return {name: value for name, (_step, value) in self._latest.get(run_id, {}).items()}


def resume_point(store: RunStore, run: dict[str, Any], owner_alive: bool = True) -> dict[str, Any] | None:
    """Where a run would continue: {"chunk", "step", "how"} from its newest whole checkpoint
    (chunk: the chunks it completed, 0 without one; it continues with chunk + 1, counted from 1
    as the progress lines count), or None for a run that will not continue (finished, or
    training now). how: "run_fit" (it was interrupted, or is NEW/ONGOING with no live owner: the
    next run_fit of its sweep trains it on) or "resume_run" (stopped by a command)."""
    orphaned = run["status"] in ("NEW", "ONGOING") and not owner_alive
    if run["status"] != "STOPPED" and not orphaned:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a torn newest checkpoint: the one before it is shown
        info = CheckpointStore(run_checkpoint_dir(store.path.parent, run["run_id"])).latest()
    return {
        "chunk": info.chunks_done if info is not None else 0,
        "step": info.global_step if info is not None else 0,
        "how": "run_fit" if orphaned or run.get("interrupted") else "resume_run",
    }


def run_rows(store: RunStore, latest: LatestMetrics, owner_alive: bool = True) -> dict[str, Any]:
    """{"runs": [run dict (RunStore.runs) + "latest": {metric: value} + "max_steps" +
    "resume_from" (`resume_point`) + "where" (node/device#executor, None on one device)],
    "varying_knobs": [...], "executors": [`cluster.executors_view` rows: node, device, alive,
    busy_share]} after bringing `latest` up to date.
    owner_alive: whether a live process trains the experiment (its owner lease).
    A run's "global_step" is the larger of the stored one (written at chunk ends) and the last
    step it logged a metric at, so a run in its first chunk does not show step 0."""
    latest.update(store)
    runs = store.runs()
    view = read_view(Path(store.path).parent)  # executors on Ray: where each run trains
    where = run_locations(view)
    for run in runs:
        run["where"] = where.get(run["run_id"])
        run["latest"] = latest.of(run["run_id"])
        run["global_step"] = max(run["global_step"] or 0, latest.last_step(run["run_id"]))
        run["resume_from"] = resume_point(store, run, owner_alive)
        max_steps = run["knobs"].get("train.max_steps")
        # -1 is TRL's "not set" (epochs decide): no known total.
        run["max_steps"] = max_steps if isinstance(max_steps, int) and max_steps > 0 else None
    return {
        "runs": runs,
        "varying_knobs": varying_knobs(runs),
        "executors": (view or {}).get("executors", []),
    }
