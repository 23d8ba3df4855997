"""Continuing a stored sweep: config fingerprints, and which stored runs a `run_fit` takes back.

Configs hold functions, so a sweep cannot be rebuilt from the store alone: the user calls
`run_fit` again with the same arguments, and each expanded config is matched to a stored run
by its fingerprint (`run_fingerprint`), a SHA-256 over

- the trainer type and every field of the run's RFModelConfig (model name and kwargs, the
  LoRA config, the training config's user-set fields), floats exactly (`float.hex`);
- each function in it (formatting_func, compute_metrics, reward_funcs, callbacks' classes) by
  module, qualified name and a hash of its source (its bytecode when the source is not
  available, e.g. in a `python -c` script);
- the chunk plan (training rows, num_chunks, seed) and a digest of the data: the row count, the
  column names, and the first and last rows of the training and eval sets (not every row: a
  large set is not read again; an edit in the middle of the data is not detected).

The create_model function is not part of it (a user may load the same model another way).

What `run_fit(..., resume=...)` does with an experiment that holds runs (`plan_resume`):

    resume=None (default)  continue the stored sweep whose configs match this group exactly (in
                           order); with no stored runs, start the first sweep; with stored runs
                           that match no sweep: ResumeMismatch, saying what differs and the choices
    resume=True            continue a matching sweep; ResumeMismatch if none matches
    resume=False           a new sweep in this experiment, beside the stored runs (which stay as
                           they are); its runs get new ids

Continuing a sweep: COMPLETED, FAILED and DELETED runs keep their state; runs interrupted (their
process ended, or run_fit was interrupted) and runs still NEW train on from their last chunk
checkpoint; runs STOPPED by a command stay STOPPED, resumable with `resume_run`. Clones made by
commands are rebuilt from their parent's config and the clone command's edit.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_MAX_DEPTH = 8


class ResumeMismatch(ValueError):
    """The config group matches no stored sweep of the experiment (the message says what differs)."""


def _function_key(fn: Any) -> list[str]:
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    try:
        body = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        body = code.co_code.hex() + repr(code.co_consts) if code is not None else ""
    return ["function", name, hashlib.sha256(body.encode()).hexdigest()[:16]]


def describe(value: Any, depth: int = 0) -> Any:
    """A JSON-able, process-independent description of a config value (no ids, no addresses)."""
    if depth > _MAX_DEPTH:
        return ["deep", type(value).__qualname__]
    if getattr(value, "_rf_is_config", False):
        return [type(value).__qualname__, [[n, describe(v, depth + 1)] for n, v in value._rf_knob_fields()]]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return ["float", value.hex()]
    if isinstance(value, dict):
        return ["dict", [[str(k), describe(v, depth + 1)] for k, v in value.items()]]
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [type(value).__name__, [describe(v, depth + 1) for v in items]]
    if isinstance(value, type) or inspect.isroutine(value):
        return _function_key(value)
    if hasattr(value, "to_dict") and callable(value.to_dict):  # a transformers / peft config
        return [type(value).__qualname__, describe(value.to_dict(), depth + 1)]
    if hasattr(value, "__dict__"):  # a callback instance, a generation config, ...
        public = {k: v for k, v in vars(value).items() if not k.startswith("_")}
        return [_function_key(type(value)), describe(public, depth + 1)]
    return [type(value).__qualname__, repr(value)]


def _row_text(dataset: Any, index: int) -> str:
    return json.dumps(dataset[index], sort_keys=True, default=repr)


def data_digest(data: Any) -> str:
    """The chunk plan and the data's digest (module docstring); cached per FitData."""
    cached = getattr(data, "_fingerprint_digest", None)
    if cached is not None:
        return cached
    parts: list[Any] = [data.trainer_type, data.plan.num_rows, data.plan.num_chunks, data.plan.seed]
    for dataset in (data.train, data.evals):
        if dataset is None:
            parts.append(None)
            continue
        n = len(dataset)
        parts.append(
            [
                n,
                list(dataset.column_names),
                _row_text(dataset, 0) if n else "",
                _row_text(dataset, n - 1) if n else "",
            ]
        )
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    data._fingerprint_digest = digest  # the data of one run_fit does not change
    return digest


def run_fingerprint(spec: Any, data: Any) -> str:
    """The fingerprint of one run's config within its run_fit (module docstring)."""
    body = [spec.trainer_type, describe(spec.model_config), data_digest(data)]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class ResumePlan:
    """The stored sweep a run_fit continues: its runs, in run-id order, with their configs."""

    sweep: int
    originals: list[tuple[Any, dict[str, Any]]]  # (spec, stored run) of each run the group made
    clones: list[dict[str, Any]] = field(default_factory=list)  # stored runs made by clone commands

    def runs(self, commands: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Every run of the sweep with its config; a clone's is its parent's with the clone
        command's edit (it needs its parent's config, which comes first)."""
        from rapidfire_core.automl.edit import edit_spec

        specs = {}
        for spec, rec in self.originals:
            specs[rec["run_id"]] = spec
            yield spec, rec
        edits = {
            (c.result or {}).get("run_id"): c.payload
            for c in commands.all()
            if c.op == "clone" and c.status == "applied"
        }
        for rec in self.clones:
            parent = specs.get(rec["parent_run_id"])
            payload = edits.get(rec["run_id"])
            if parent is None or payload is None:
                continue  # its parent is not part of this sweep's configs: it cannot be rebuilt
            spec = edit_spec(parent, payload.get("changes", {}))
            specs[rec["run_id"]] = spec
            yield spec, rec


def plan_resume(
    stored: list[dict[str, Any]],
    specs: list[Any],
    fingerprints: list[str],
    resume: bool | None,
    experiment: str,
) -> ResumePlan | None:
    """The sweep to continue, or None for a new sweep (module docstring); ResumeMismatch."""
    if resume is not None and not isinstance(resume, bool):
        raise TypeError(f"resume must be True, False or None, got {resume!r}")
    if resume is False:
        return None
    sweeps: dict[int, list[dict[str, Any]]] = {}
    for rec in stored:
        if rec["parent_run_id"] is None:
            sweeps.setdefault(rec["sweep"], []).append(rec)
    for sweep in sorted(sweeps, reverse=True):
        runs = sweeps[sweep]
        if [r["fingerprint"] for r in runs] == fingerprints:
            clones = [r for r in stored if r["sweep"] == sweep and r["parent_run_id"] is not None]
            return ResumePlan(sweep, list(zip(specs, runs, strict=True)), clones)
    if not stored and resume is None:
        return None
    raise ResumeMismatch(_mismatch_message(sweeps, specs, fingerprints, experiment, resume))


def _mismatch_message(
    sweeps: dict[int, list[dict[str, Any]]],
    specs: list[Any],
    fingerprints: list[str],
    experiment: str,
    resume: bool | None,
) -> str:
    if not sweeps:
        return f"resume=True, but experiment '{experiment}' holds no runs to continue"
    latest = sweeps[max(sweeps)]
    lines = [
        f"experiment '{experiment}' holds {sum(len(r) for r in sweeps.values())} run(s) from "
        f"{len(sweeps)} earlier run_fit(s), and this config group ({len(specs)} config(s)) "
        "matches none of them."
    ]
    if len(latest) != len(specs):
        lines.append(f"The last one made {len(latest)} run(s); this group expands to {len(specs)}.")
    for index, (spec, rec) in enumerate(zip(specs, latest, strict=False)):
        if rec["fingerprint"] == fingerprints[index]:
            continue
        knobs_then, knobs_now = rec["knobs"], json.loads(json.dumps(dict(spec.knobs), default=str))
        changed = sorted(k for k in set(knobs_then) | set(knobs_now) if knobs_then.get(k) != knobs_now.get(k))
        what = (
            ", ".join(f"{k}: {knobs_then.get(k)!r} -> {knobs_now.get(k)!r}" for k in changed[:4])
            if changed
            else "same knobs; a function (formatting, metrics, rewards), another setting or the data differs"
        )
        lines.append(f"  config {index + 1} vs stored run {rec['run_id']}: {what}")
        if len(lines) > 6:
            break
    lines.append(
        "To start a new sweep beside the stored runs pass run_fit(..., resume=False); to keep sweeps "
        "apart use a new experiment name; to continue the stored sweep call run_fit with its configs."
    )
    return "\n".join(lines)


__all__ = ["ResumeMismatch", "ResumePlan", "data_digest", "describe", "plan_resume", "run_fingerprint"]
