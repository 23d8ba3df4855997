"""The metric names a sweep's runs will log, known before training, and objectives resolved on them.

An automatic search reads one logged metric at every chunk end (`automl.objective`). Its name
is checked here before anything trains, so a name no run will log is a ConfigError at `run_fit`
instead of a `MissingObjective` after the first chunk has been paid for.

A run logs
- what its TRL trainer logs (`TRAINER_METRICS`: the names TRL 1.x logs per trainer type, plus
  the namespaces whose names depend on the config, e.g. GRPO's `rewards/<reward func>/mean`),
  and at evaluations the same names with an `eval_` prefix, and `eval_loss`;
- with `compute_metrics`, the keys it returns, as they are (RapidFire AI's names: `rougeL`).
  They are learned by calling `compute_metrics((references, references))` once on the first
  two eval references (the call a generation eval makes, with perfect predictions).

Objectives written for RapidFire AI resolve as they are (`maximize:rougeL`); the name this
engine used before (`eval_rougeL`) resolves to the same metric.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rapidfire_core.errors import ConfigError

_COMMON = {
    "loss",
    "grad_norm",
    "learning_rate",
    "entropy",
    "num_tokens",
    "mean_token_accuracy",
    "aux_loss",
    "train_loss",
    "train_runtime",
    "train_wall_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "total_flos",
}
TRAINER_METRICS: dict[str, frozenset[str]] = {
    "SFT": frozenset(_COMMON),
    "DPO": frozenset(
        _COMMON
        | {
            "rewards/chosen",
            "rewards/rejected",
            "rewards/accuracies",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
            "logits/chosen",
            "logits/rejected",
        }
    ),
    "GRPO": frozenset(
        _COMMON
        | {
            "reward",
            "reward_std",
            "frac_reward_zero_std",
            "kl",
            "policy_loss",
            "entropy_coef",
            "cispo_clip_ratio",
        }
    ),
}
# Names under these prefixes depend on the config (reward function names, clipping, sampling).
NAMESPACES: tuple[str, ...] = (
    "rewards/",
    "logps/",
    "logits/",
    "completions/",
    "clip_ratio/",
    "sampling/",
    "tools/",
    "vespo/",
)
_EVAL_ONLY = {"eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


@dataclass(frozen=True)
class RunMetricNames:
    """What every run of a sweep will log (module docstring).

    trainer_type: "SFT" | "DPO" | "GRPO"; has_eval: an eval set is given (evaluations happen);
    generation: the keys compute_metrics returns (empty without it); probe_error: why the
    compute_metrics probe failed, if it did."""

    trainer_type: str
    has_eval: bool
    generation: frozenset[str] = frozenset()
    probe_error: str | None = None

    def resolve(self, name: str) -> str | None:
        """The name under which the metric `name` is logged, or None if no run logs it."""
        if name in self.generation:
            return name
        if name.startswith("eval_") and name[len("eval_") :] in self.generation:
            return name[len("eval_") :]  # this engine's name before it logged RapidFire AI's
        if f"eval_{name}" in self.generation:
            return f"eval_{name}"
        trainer = TRAINER_METRICS[self.trainer_type]
        if name.startswith("eval_"):
            base = name[len("eval_") :]
            known = name in _EVAL_ONLY or base in trainer or base.startswith(NAMESPACES)
            return name if known and self.has_eval else None
        return name if name in trainer or name.startswith(NAMESPACES) else None

    def listing(self) -> list[str]:
        """The fixed names a run logs (for messages), generation metrics first."""
        names = sorted(self.generation) + sorted(TRAINER_METRICS[self.trainer_type])
        if self.has_eval:
            names += sorted(_EVAL_ONLY)
        return names

    def explain(self, name: str) -> str:
        """Why `name` does not resolve: what runs log, the closest names, the probe's error."""
        parts = [f"no run of this sweep logs a metric {name!r}"]
        if name.startswith("eval_") and not self.has_eval:
            parts.append("(an evaluation metric: pass an eval_dataset to run_fit)")
        close = difflib.get_close_matches(name, self.listing(), n=3, cutoff=0.6)
        if close:
            parts.append(f"did you mean {' or '.join(repr(c) for c in close)}?")
        parts.append(
            f"The runs log {self.listing()}"
            + (f" and names under {list(NAMESPACES)}" if self.trainer_type != "SFT" else "")
        )
        if self.probe_error:
            parts.append(f"(compute_metrics could not be probed for its names: {self.probe_error})")
        return " ".join(parts)


def probe_generation_metrics(
    compute_metrics: Callable[[tuple[list[str], list[str]]], dict[str, Any]], references: list[str]
) -> tuple[frozenset[str], str | None]:
    """The keys `compute_metrics` returns, from one call with `references` as the predictions;
    (empty, the error) when the call fails or returns no dict."""
    try:
        out = compute_metrics((list(references), list(references)))
    except Exception as exc:  # noqa: BLE001 - the user's function; reported with the objective
        return frozenset(), f"{type(exc).__name__}: {exc}"
    if not isinstance(out, dict):
        return frozenset(), f"it returned {type(out).__name__}, not a dict"
    return frozenset(str(k) for k in out), None


def sweep_metric_names(
    trainer_type: str,
    compute_metrics_funcs: Iterable[Callable | None],
    eval_rows: list[dict[str, Any]] | None,
) -> RunMetricNames:
    """The names every run logs: the trainer's, and the generation metrics that every run's
    compute_metrics returns (a run without one logs none). `eval_rows`: a few eval rows over
    their raw columns (None without an eval set)."""
    from rapidfire_core.trainers.generation_eval import prompt_and_reference

    funcs = list(compute_metrics_funcs)
    has_eval = eval_rows is not None
    if not has_eval or not funcs or any(f is None for f in funcs):
        return RunMetricNames(trainer_type, has_eval)
    pairs = [p for p in map(prompt_and_reference, eval_rows) if p is not None]
    references = [reference for _, reference in pairs[:2]]
    names: frozenset[str] | None = None
    error = None
    probed: dict[int, frozenset[str]] = {}
    for func in funcs:
        if id(func) not in probed:
            probed[id(func)], problem = probe_generation_metrics(func, references)
            error = error or problem
        names = probed[id(func)] if names is None else names & probed[id(func)]
    return RunMetricNames(trainer_type, has_eval, names or frozenset(), error)


def metric_names_of_sweep(specs: list[Any], evals: Any, formatted: Any) -> RunMetricNames:
    """`sweep_metric_names` of a run_fit's expanded `specs`, its raw eval set (or None) and its
    `FormattedDatasets` (the eval rows the runs see: the first 8, formatted, over their raw rows)."""
    from rapidfire_core.trainers.generation_eval import eval_rows_over_raw

    configs = [spec.create_model_dict() for spec in specs]
    rows = None
    if evals is not None:
        head = evals.select(range(min(8, len(evals))))
        rows = eval_rows_over_raw(head, formatted.get(head, configs[0].get("formatting_func")))
    return sweep_metric_names(specs[0].trainer_type, [c.get("compute_metrics") for c in configs], rows)


def resolve_objective_metric(name: str, names: RunMetricNames, what: str = "objective") -> str:
    """The logged name of objective metric `name`; ConfigError (before training) if none."""
    resolved = names.resolve(name)
    if resolved is None:
        raise ConfigError(f"{what} metric {name!r} cannot be computed: {names.explain(name)}")
    return resolved


__all__ = [
    "NAMESPACES",
    "TRAINER_METRICS",
    "RunMetricNames",
    "metric_names_of_sweep",
    "probe_generation_metrics",
    "resolve_objective_metric",
    "sweep_metric_names",
]
