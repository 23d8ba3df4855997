"""`RFSuccessiveHalving`: asynchronous successive halving (ASHA) with rungs at chunk ends.

    RFSuccessiveHalving(configs, trainer_type="SFT", objective="minimize:eval_loss",
                        grace_period=1, reduction_factor=2, max_rungs=None)

The configs expand as in `RFGridSearch`. Rungs are at chunk counts (across epochs)

    rung_i = grace_period * reduction_factor ** i        i = 0, 1, ...  (at most max_rungs)

After every chunk round each managed run that has completed a rung's chunks for the first time
is judged at that rung against every value recorded at that rung so far, by any managed run
(runs that reached it earlier, in this round, or that have completed or been stopped since):

    k = max(1, n // reduction_factor)      n = values recorded at the rung
    the run goes on if its value is among the k best (a tie with the k-th best goes on),
    else a `stop` command (source "automl") parks it.

Judging runs against what has been recorded so far, not against a full cohort, is what makes
it asynchronous: nobody waits for stragglers, and a run that arrives late (a clone, a resumed
run) is judged when it gets there. Stopped runs keep all their state: `resume_run` overrides
the decision. Runs that complete before a rung are simply not judged there.
"""

from __future__ import annotations

from typing import Any

from rapidfire_core.automl.objective import Objective
from rapidfire_core.automl.policy import SearchPolicy, positive_int
from rapidfire_core.automl.search import RFGridSearch


class SuccessiveHalvingPolicy(SearchPolicy):
    def __init__(
        self, objective: Objective, grace_period: int, reduction_factor: int, max_rungs: int | None
    ) -> None:
        super().__init__(objective)
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.max_rungs = max_rungs
        self.recorded: dict[int, dict[int, float]] = {}  # rung chunk -> run id -> value
        self.judged: set[tuple[int, int]] = set()  # (run id, rung chunk)
        self.stopped: dict[int, int] = {}  # run id -> rung chunk at which the policy stopped it

    def rungs_upto(self, chunks_done: int) -> list[int]:
        """The rung chunk counts <= chunks_done."""
        rungs, rung, i = [], self.grace_period, 0
        while rung <= chunks_done and (self.max_rungs is None or i < self.max_rungs):
            rungs.append(rung)
            rung *= self.reduction_factor
            i += 1
        return rungs

    def survives(self, value: float, values: list[float]) -> bool:
        ranked = sorted(values, key=self.objective.sort_key)
        k = max(1, len(ranked) // self.reduction_factor)
        return not self.objective.better(ranked[k - 1], value)

    def round_end(self, controller: Any, round_number: int) -> None:
        runs = self.managed_runs(controller)
        newly: list[tuple[int, int]] = []
        for run in runs:  # record first: runs reaching a rung in the same round see each other
            if run["status"] in ("FAILED", "DELETED"):
                continue  # their numbers are not a standard to hold the others to
            for rung in self.rungs_upto(run["chunks_done"]):
                at_rung = self.recorded.setdefault(rung, {})
                if run["run_id"] not in at_rung:
                    at_rung[run["run_id"]] = self.objective.value_at(controller.store, run["run_id"], rung)
                if self.in_flight(run) and (run["run_id"], rung) not in self.judged:
                    newly.append((run["run_id"], rung))
        for run_id, rung in newly:
            self.judged.add((run_id, rung))
            if run_id in self.stopped:
                continue  # already stopped at a lower rung this round
            values = list(self.recorded[rung].values())
            if not self.survives(self.recorded[rung][run_id], values):
                self.stopped[run_id] = rung
                self.submit(controller, "stop", run_id)


class RFSuccessiveHalving(RFGridSearch):
    """Grid-expanded configs under asynchronous successive halving (module docstring)."""

    def __init__(
        self,
        configs: Any,
        trainer_type: str = "SFT",
        objective: str = "minimize:eval_loss",
        grace_period: int = 1,
        reduction_factor: int = 2,
        max_rungs: int | None = None,
    ) -> None:
        super().__init__(configs, trainer_type)
        self.objective = Objective.parse(objective)
        self.grace_period = positive_int(grace_period, "grace_period")
        self.reduction_factor = positive_int(reduction_factor, "reduction_factor", minimum=2)
        self.max_rungs = None if max_rungs is None else positive_int(max_rungs, "max_rungs")

    def search_policy(self) -> SuccessiveHalvingPolicy:
        return SuccessiveHalvingPolicy(
            self.objective, self.grace_period, self.reduction_factor, self.max_rungs
        )

    def __repr__(self) -> str:
        return (
            f"RFSuccessiveHalving({len(self.configs)} configs, trainer_type={self.trainer_type!r}, "
            f"objective='{self.objective.direction}:{self.objective.metric}', "
            f"grace_period={self.grace_period}, reduction_factor={self.reduction_factor})"
        )
