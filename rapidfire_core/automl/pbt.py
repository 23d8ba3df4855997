"""`RFPopulationBased`: population-based training (PBT) at chunk ends.

    RFPopulationBased(configs, trainer_type="SFT", objective="minimize:eval_loss",
                      perturbation_interval=1, quantile=0.25,
                      mutations={"learning_rate": Range(1e-5, 1e-2, log=True)},
                      resample_probability=0.25, seed=42)

The configs expand as in `RFGridSearch` (the initial population). Every `perturbation_interval`
chunks, once every run of the population still in flight has completed that many chunks, the
runs are ranked by the objective at that chunk, and each run in the bottom `quantile` is
replaced (exploit + explore):

    stop(bottom run)                                   -- it stays resumable by hand
    clone(a random top-quantile run, warm_start=True,  -- its weights, moments and place in
          changes=mutate(top run's knobs))             --    the data (see the warm-start clone)

mutate: for each knob in `mutations` (a change key: "learning_rate", "peft.lora_dropout", ...),
with probability `resample_probability` a fresh draw from its space (a `List` or `Range`),
else a perturbation: numbers times 0.8 or 1.2 (ints rounded, kept >= 1), a `List` value moved
to a neighbour. Every mutated knob must be set in the configs (its value is read from the
run's knobs). At least one run is replaced when the population has two or more runs.
"""

from __future__ import annotations

import random
from typing import Any

from rapidfire_core.automl.knobs import List, Range
from rapidfire_core.automl.objective import Objective
from rapidfire_core.automl.policy import SearchPolicy, positive_int
from rapidfire_core.automl.search import RFGridSearch
from rapidfire_core.errors import ConfigError

PERTURB_FACTORS = (0.8, 1.2)


def _knob_key(knobs: dict[str, Any], name: str) -> str:
    """The knob in `knobs` a mutation key names (full name, or a unique last component)."""
    if name in knobs:
        return name
    matches = [key for key in knobs if key.split(".")[-1] == name]
    if len(matches) != 1:
        raise ConfigError(
            f"RFPopulationBased: mutation {name!r} must name one knob set in every config "
            f"(the run's knobs are {sorted(knobs)})"
        )
    return matches[0]


class PopulationBasedPolicy(SearchPolicy):
    def __init__(
        self,
        objective: Objective,
        interval: int,
        quantile: float,
        mutations: dict[str, Any],
        resample_probability: float,
        seed: int,
    ) -> None:
        super().__init__(objective)
        self.interval = interval
        self.quantile = quantile
        self.mutations = mutations
        self.resample_probability = resample_probability
        self.rng = random.Random(seed)
        self.done_points: set[int] = set()
        self.decisions: list[dict[str, Any]] = []  # (point, replaced, parent, changes)

    def mutate(self, knobs: dict[str, Any]) -> dict[str, Any]:
        changes = {}
        for name, space in self.mutations.items():
            key = _knob_key(knobs, name)
            current = knobs[key]
            if isinstance(space, (List, Range)) and self.rng.random() < self.resample_probability:
                changes[key] = space.sample(self.rng)
            elif isinstance(space, List):
                values = space.values
                index = values.index(current) if current in values else self.rng.randrange(len(values))
                neighbours = [i for i in (index - 1, index + 1) if 0 <= i < len(values)] or [index]
                changes[key] = values[self.rng.choice(neighbours)]
            elif isinstance(current, bool) or not isinstance(current, (int, float)):
                raise ConfigError(
                    f"RFPopulationBased: knob {key!r} = {current!r} is not numeric; give a List"
                )
            else:
                value = current * self.rng.choice(PERTURB_FACTORS)
                changes[key] = max(1, round(value)) if isinstance(current, int) else float(value)
        return changes

    def round_end(self, controller: Any, round_number: int) -> None:
        population = [run for run in self.managed_runs(controller) if self.in_flight(run)]
        if len(population) < 2:
            return
        point = min(run["chunks_done"] for run in population) // self.interval
        if point == 0 or point in self.done_points:
            return  # not every member has reached the next perturbation point yet
        self.done_points.add(point)
        chunk = point * self.interval
        scored = sorted(
            population,
            key=lambda run: self.objective.sort_key(
                self.objective.value_at(controller.store, run["run_id"], chunk)
            ),
        )
        n_replace = max(1, int(len(scored) * self.quantile))
        n_replace = min(n_replace, len(scored) // 2)
        top, bottom = scored[:n_replace], scored[-n_replace:]
        for loser in bottom:
            parent = self.rng.choice(top)
            changes = self.mutate(parent["knobs"])
            self.submit(controller, "stop", loser["run_id"])
            self.submit(controller, "clone", parent["run_id"], {"changes": changes, "warm_start": True})
            self.decisions.append(
                {"chunk": chunk, "replaced": loser["run_id"], "parent": parent["run_id"], "changes": changes}
            )


class RFPopulationBased(RFGridSearch):
    """Grid-expanded initial population under PBT (module docstring)."""

    def __init__(
        self,
        configs: Any,
        trainer_type: str = "SFT",
        objective: str = "minimize:eval_loss",
        perturbation_interval: int = 1,
        quantile: float = 0.25,
        mutations: dict[str, Any] | None = None,
        resample_probability: float = 0.25,
        seed: int = 42,
    ) -> None:
        super().__init__(configs, trainer_type)
        self.objective = Objective.parse(objective)
        positive_int(perturbation_interval, "perturbation_interval")
        if not (isinstance(quantile, (int, float)) and 0 < quantile <= 0.5):
            raise ConfigError(f"quantile must be in (0, 0.5], got {quantile!r}")
        if not (isinstance(resample_probability, (int, float)) and 0 <= resample_probability <= 1):
            raise ConfigError(f"resample_probability must be in [0, 1], got {resample_probability!r}")
        mutations = {"learning_rate": None} if mutations is None else dict(mutations)
        if not mutations:
            raise ConfigError("mutations must name at least one knob")
        for name, space in mutations.items():
            if not isinstance(name, str) or not (space is None or isinstance(space, (List, Range))):
                raise ConfigError(f"mutations: {name!r} must map to a List, a Range or None, got {space!r}")
        self.perturbation_interval = perturbation_interval
        self.quantile = float(quantile)
        self.mutations = mutations
        self.resample_probability = float(resample_probability)
        self.seed = seed

    def expand(self, strict: bool = True) -> list:
        specs = super().expand(strict)
        for spec in specs:  # every mutated knob must be readable from every run's knobs
            for name in self.mutations:
                _knob_key(spec.knobs, name)
        return specs

    def search_policy(self) -> PopulationBasedPolicy:
        return PopulationBasedPolicy(
            self.objective,
            self.perturbation_interval,
            self.quantile,
            self.mutations,
            self.resample_probability,
            self.seed,
        )
