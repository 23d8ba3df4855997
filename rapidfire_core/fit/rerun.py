"""Re-running a notebook: which experiment a `run_fit` trains in (RapidFire AI's `name_1` naming).

A notebook run top to bottom again calls `Experiment("sweep")` and `run_fit` again. What that
`run_fit` does, with the default `resume=None`:

    the experiment holds no runs                      train here (the first sweep)
    its sweep with these configs is unfinished        continue it here (crash-resume: a run is
      (a run NEW, ONGOING, or stopped by a crash)     NEW, ONGOING or interrupted)
    its sweep with these configs is finished          a new experiment "sweep_1", with a notice
    it holds runs of other configs (one edited lr)    a new experiment "sweep_1", with a notice
    an automatic search (ASHA, Optuna, PBT) and       a new experiment "sweep_1" (a search's
      the experiment holds runs                       decisions are not persisted to continue)

"The experiment" is the latest of the family `sweep`, `sweep_1`, `sweep_2`, ... that exists
(the one the previous re-run made), so re-running a notebook whose second run crashed continues
`sweep_1`. A new name is the family's next free one, as RapidFire AI counts: a trailing `_<n>`
of the name counts on (`exp_1` -> `exp_2`). `resume=True` / `resume=False` keep their meaning
within the named experiment (continue a sweep of it / add a sweep beside its runs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rapidfire_core.control.run_status import IN_FLIGHT

_SUFFIX = re.compile(r"^(?P<base>.+?)_(?P<n>\d+)$")
RUNS_DB = "runs.db"


def _split(name: str) -> tuple[str, int]:
    match = _SUFFIX.match(name)
    return (match["base"], int(match["n"])) if match else (name, 0)


def _member(base: str, n: int) -> str:
    return base if n == 0 else f"{base}_{n}"


def holds_runs(path: Path) -> bool:
    """The experiment folder `path` exists with a run store (it was trained in)."""
    return (path / RUNS_DB).is_file()


def latest_of_family(root: Path, name: str) -> str:
    """The last existing member of `name`'s family that has a run store, counting on from `name`
    (`name` itself when no later one exists)."""
    base, n = _split(name)
    latest = name
    while holds_runs(root / _member(base, n + 1)) or (root / _member(base, n + 1)).is_dir():
        n += 1
        if holds_runs(root / _member(base, n)):
            latest = _member(base, n)
    return latest


def next_free_name(root: Path, name: str) -> str:
    """The first member of `name`'s family after it whose folder does not exist."""
    base, n = _split(name)
    n += 1
    while (root / _member(base, n)).exists():
        n += 1
    return _member(base, n)


@dataclass(frozen=True)
class RerunChoice:
    """Where a run_fit trains: `name`; `notice` is the one line to show when it is not the
    experiment the user opened (None when it is)."""

    name: str
    notice: str | None = None


def _sweep_state(stored: Sequence[dict[str, Any]], fingerprints: Sequence[str]) -> str:
    """ "none" (no stored sweep has these configs), "unfinished" or "finished"."""
    sweeps: dict[int, list[dict[str, Any]]] = {}
    for rec in stored:
        sweeps.setdefault(rec["sweep"], []).append(rec)
    for runs in sweeps.values():
        originals = [r for r in runs if r["parent_run_id"] is None]
        if [r["fingerprint"] for r in originals] != list(fingerprints):
            continue
        unfinished = any(r["status"] in {s.value for s in IN_FLIGHT} or r["interrupted"] for r in runs)
        return "unfinished" if unfinished else "finished"
    return "none"


def choose_experiment(
    root: Path,
    opened: str,
    stored_of: Any,
    fingerprints: Sequence[str],
    resume: bool | None,
    automatic: bool,
) -> RerunChoice:
    """The experiment a run_fit trains in (module docstring).

    root: the experiments root; opened: the name the user opened; stored_of(name): the stored
    run records of experiment `name` (RunStore.runs() rows); fingerprints: this run_fit's
    configs' (`scheduler.resume.run_fingerprint`); automatic: the group is an automatic search."""
    if resume is not None:
        return RerunChoice(opened)
    latest = latest_of_family(root, opened)
    stored = stored_of(latest) if holds_runs(root / latest) else []
    if not stored:
        return RerunChoice(latest, None if latest == opened else f"Continuing in experiment '{latest}'")
    state = "automatic" if automatic else _sweep_state(stored, fingerprints)
    if state == "unfinished":
        notice = None if latest == opened else f"Continuing the unfinished sweep of experiment '{latest}'"
        return RerunChoice(latest, notice)
    new = next_free_name(root, latest)
    why = {
        "finished": "already holds this sweep, finished",
        "none": "holds runs of other configs",
        "automatic": "holds runs, and an automatic search starts afresh",
    }[state]
    return RerunChoice(
        new,
        f"Experiment '{latest}' {why}: this run_fit trains in a new experiment '{new}' "
        f"(results of '{latest}' stay in {root / latest})",
    )


__all__ = ["RerunChoice", "choose_experiment", "holds_runs", "latest_of_family", "next_free_name"]
