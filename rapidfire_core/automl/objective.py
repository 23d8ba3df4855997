"""Objectives of automatic searches: a logged metric and a direction.

    Objective.parse("minimize:eval_loss")            # or "maximize:rewards/accuracies"
    Objective.parse("eval_loss")                     # a bare name minimizes

The value of a run at chunk c is the last value of the metric it logged up to the end of its
chunk c (chunks counted across epochs): with an eval set the engine evaluates at every chunk
end, so `eval_*` metrics are the evaluation at the end of chunk c. ("Up to" and not "in": a run
whose trainer dropped every row of chunk c completes it with the chunk before and logs nothing
in it.) A run that has logged no value of the metric by then is a `MissingObjective` error
naming the metric, the run, the chunk and what was logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rapidfire_core.errors import ConfigError, RapidFireError

_DIRECTIONS = ("minimize", "maximize")


class MissingObjective(RapidFireError):
    """The objective's metric was not logged by a run at a rung."""


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "minimize" | "maximize"

    @classmethod
    def parse(cls, text: Any, what: str = "objective") -> Objective:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{what} must be a string such as 'minimize:eval_loss', got {text!r}")
        direction, sep, metric = text.partition(":")
        if not sep:
            direction, metric = "minimize", text
        if direction not in _DIRECTIONS or not metric:
            raise ConfigError(f"{what} {text!r}: expected 'minimize:<metric>' or 'maximize:<metric>'")
        return cls(metric, direction)

    def better(self, a: float, b: float) -> bool:
        """True if value `a` is strictly better than `b`."""
        return a < b if self.direction == "minimize" else a > b

    def sort_key(self, value: float) -> float:
        """Ascending order of this key is best first."""
        return value if self.direction == "minimize" else -value

    def needs_eval(self) -> bool:
        return self.metric.startswith("eval_")

    def check(self, has_eval: bool) -> None:
        """Before training: an eval_* objective needs an eval set."""
        if self.needs_eval() and not has_eval:
            raise ConfigError(
                f"objective metric {self.metric!r} is an evaluation metric: pass an eval_dataset to run_fit"
            )

    def resolved(self, names: Any, what: str = "objective") -> Objective:
        """This objective on the name its metric is logged under (`automl.metric_names`, a
        `RunMetricNames`); ConfigError before training if no run logs it."""
        from rapidfire_core.automl.metric_names import resolve_objective_metric

        return Objective(resolve_objective_metric(self.metric, names, what), self.direction)

    def value_at(self, store: Any, run_id: int, chunk: int) -> float:
        """The run's value at chunk `chunk` (module docstring); MissingObjective if not logged."""
        value = store.last_metric(run_id, self.metric, chunk)
        if value is None:
            logged = store.metric_names(run_id)
            raise MissingObjective(
                f"objective metric {self.metric!r} was not logged by run {run_id} by the end of chunk "
                f"{chunk}; it logged {logged}"
            )
        return value
