"""`RFOptuna`: Optuna's samplers over the search space, trials pruned at chunk ends.

    RFOptuna(configs, trainer_type="SFT", n_initial=4, budget=16, objective="minimize:eval_loss",
             sampler="tpe", pruner="median", seed=42)

- The space is the `List`s and `Range`s inside `configs`. Each trial draws one concrete config
  through Optuna's ask/tell interface (`List` -> `suggest_categorical`, `Range` ->
  `suggest_float` / `suggest_int` with its log / step). Parameters are named by their path
  (`training_args.learning_rate`, `peft_config.r`, `peft_config[1]` for a choice of configs).
- `n_initial` trials start together; each time one ends (completed, pruned or failed) a new
  one is sampled, until `budget` trials have been made. A new trial is a cold clone (source
  "automl") of the trial that ended, with the new trial's training / LoRA knobs as its changes.
- After every chunk round each trial in flight reports its objective at each newly completed
  chunk (`trial.report(value, step=chunk)`), then the pruner decides:
    "median": prune if its value is worse than the median of the values other trials (running,
              completed or pruned) reported at that chunk, once at least `min_peers` did
              (RapidFire AI's median pruner also compares running trials with each other);
    "sha":    successive halving at chunks 1, 2, 4, ... keeping the best half of what was
              recorded at that rung (as `RFSuccessiveHalving`);
    None:     no pruning.
  A pruned trial is stopped (a `stop` command; it stays resumable by hand) and told PRUNED; a
  completed trial is told its last logged objective value; a failed one FAIL.
- Multi-objective: a list of objectives; the study has one direction per objective and
  completed trials are told every value. Optuna prunes single-objective studies only, so a
  pruner with several objectives is refused.
- The study lives in `<experiment>/optuna.db` (Optuna's RDB storage, study name = the
  experiment's name), so it survives the process and `optuna.load_study` reads it. The initial
  trials are drawn in memory while `run_fit` validates, and written there only when training
  starts: a refused `run_fit` leaves no trial behind. `search.study` (RapidFire AI's name:
  `search._study`) is the study.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rapidfire_core.automl.expand import has_knob
from rapidfire_core.automl.flatten import flatten_knobs
from rapidfire_core.automl.knobs import List, Range
from rapidfire_core.automl.model_config import RFModelConfig
from rapidfire_core.automl.objective import Objective
from rapidfire_core.automl.policy import SearchPolicy, positive_int
from rapidfire_core.automl.search import RunSpec, _ConfigGroup
from rapidfire_core.automl.validate import check_run, prepare_run
from rapidfire_core.errors import ConfigError

SAMPLERS = ("tpe", "cmaes", "random")
PRUNERS = ("median", "sha", None)
_PRIMITIVES = (str, int, float, bool, type(None))


def suggest(value: Any, trial: Any, path: str) -> Any:
    """One concrete draw of `value` from an Optuna trial (module docstring)."""
    if not has_knob(value):
        return value
    if isinstance(value, List):
        if all(isinstance(v, _PRIMITIVES) for v in value.values):
            return trial.suggest_categorical(path, value.values)
        index = trial.suggest_categorical(path, list(range(len(value.values))))
        return suggest(value.values[index], trial, f"{path}[{index}]")
    if isinstance(value, Range):
        if value.dtype == "int":
            return trial.suggest_int(
                path, int(value.start), int(value.end), step=int(value.step or 1), log=value.log
            )
        return trial.suggest_float(path, float(value.start), float(value.end), step=value.step, log=value.log)
    if hasattr(value, "_rf_knob_fields"):
        prefix = f"{path}." if path else ""
        return value._rf_replace({n: suggest(v, trial, f"{prefix}{n}") for n, v in value._rf_knob_fields()})
    if isinstance(value, dict):
        return type(value)((k, suggest(v, trial, f"{path}.{k}")) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(suggest(v, trial, f"{path}[{i}]") for i, v in enumerate(value))
    return value


class OptunaPolicy(SearchPolicy):
    def __init__(self, search: RFOptuna) -> None:
        super().__init__(search.objectives[0])
        self.search = search
        self.trial_of: dict[int, Any] = {}  # run id -> optuna trial
        self.reported: dict[int, int] = {}  # run id -> last chunk reported
        self.values: dict[int, dict[int, float]] = {}  # chunk -> run id -> value (median pruner)
        self.pending_clones: dict[int, Any] = {}  # command id -> trial waiting for its run
        self.finished: set[int] = set()

    def check(self, has_eval: bool, metrics: Any = None) -> None:
        for objective in self.search.objectives:
            objective.check(has_eval)
        if metrics is not None:
            self.search.objectives = [
                o.resolved(metrics, "RFOptuna objective") for o in self.search.objectives
            ]
            self.objective = self.search.objectives[0]

    def bind(self, experiment_path: Path) -> None:
        super().bind(experiment_path)
        self.search.open_study(Path(experiment_path))

    def start(self, run_ids: list[int]) -> None:
        super().start(run_ids)
        self.trial_of.update(zip(run_ids, self.search.initial_trials, strict=True))

    def round_end(self, controller: Any, round_number: int) -> None:
        self._adopt_clones(controller)
        store = controller.store
        for run in self.managed_runs(controller):
            run_id = run["run_id"]
            trial = self.trial_of.get(run_id)
            if trial is None or run_id in self.finished:
                continue
            if run["status"] in ("COMPLETED", "FAILED", "DELETED"):
                self._finish(controller, run)
                continue
            if not self.in_flight(run):
                continue  # stopped by hand: it may be resumed
            for chunk in range(self.reported.get(run_id, 0) + 1, run["chunks_done"] + 1):
                self.reported[run_id] = chunk
                if len(self.search.objectives) > 1:
                    continue
                value = self.objective.value_at(store, run_id, chunk)
                trial.report(value, step=chunk)
                self.values.setdefault(chunk, {})[run_id] = value
                if self._should_prune(run_id, chunk, value):
                    self.submit(controller, "stop", run_id)
                    self.search.study.tell(trial, state=_state("PRUNED"))
                    self.finished.add(run_id)
                    self._replace(controller, run_id)
                    break

    def _should_prune(self, run_id: int, chunk: int, value: float) -> bool:
        peers = [v for r, v in self.values[chunk].items() if r != run_id]
        if self.search.pruner == "median":
            if len(peers) < self.search.min_peers:
                return False
            return self.objective.better(statistics.median(peers), value)
        if self.search.pruner == "sha":
            if chunk & (chunk - 1):  # rungs at 1, 2, 4, 8, ... chunks
                return False
            ranked = sorted(peers + [value], key=self.objective.sort_key)
            return self.objective.better(ranked[max(1, len(ranked) // 2) - 1], value)
        return False

    def _finish(self, controller: Any, run: dict[str, Any]) -> None:
        run_id = run["run_id"]
        self.finished.add(run_id)
        trial = self.trial_of[run_id]
        if run["status"] == "COMPLETED":
            values = [controller.store.last_metric(run_id, o.metric) for o in self.search.objectives]
            if None in values:
                missing = [o.metric for o, v in zip(self.search.objectives, values, strict=True) if v is None]
                raise ConfigError(f"RFOptuna: run {run_id} completed without logging {missing}")
            self.search.study.tell(trial, values if len(values) > 1 else values[0])
        else:
            self.search.study.tell(trial, state=_state("FAIL"))
        self._replace(controller, run_id)

    def _replace(self, controller: Any, ended_run_id: int) -> None:
        """Sample a new trial while the budget lasts; it becomes a cold clone of the ended run."""
        if self.search.trials_made >= self.search.budget:
            return
        trial, spec = self.search.ask()
        parent = controller.store.get_run(ended_run_id)["knobs"]
        changes = {
            k: v for k, v in spec.knobs.items() if k.startswith(("train.", "peft.")) and parent.get(k) != v
        }
        command = self.submit(controller, "clone", ended_run_id, {"changes": changes, "warm_start": False})
        self.pending_clones[command.command_id] = trial

    def _adopt_clones(self, controller: Any) -> None:
        for command_id, trial in list(self.pending_clones.items()):
            command = controller.commands.get(command_id)
            if not command.done:
                continue
            del self.pending_clones[command_id]
            if command.new_run_id is not None:
                self.trial_of[command.new_run_id] = trial
            else:
                self.search.study.tell(trial, state=_state("FAIL"))


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return getattr(TrialState, name)


class RFOptuna(_ConfigGroup):
    """Optuna over the knobs of `configs`, pruning at chunk ends (module docstring)."""

    def __init__(
        self,
        configs: Any,
        trainer_type: str = "SFT",
        n_initial: int = 4,
        budget: int = 16,
        objective: str | list[str] = "minimize:eval_loss",
        sampler: str = "tpe",
        pruner: str | None = "median",
        seed: int = 42,
        min_peers: int = 2,
    ) -> None:
        super().__init__(configs, trainer_type)
        for name, value in (("n_initial", n_initial), ("budget", budget), ("min_peers", min_peers)):
            positive_int(value, f"RFOptuna: {name}")
        if budget < n_initial:
            raise ConfigError(f"RFOptuna: budget ({budget}) must be at least n_initial ({n_initial})")
        if sampler not in SAMPLERS:
            raise ConfigError(f"RFOptuna: sampler must be one of {SAMPLERS}, got {sampler!r}")
        if pruner not in PRUNERS:
            raise ConfigError(f"RFOptuna: pruner must be one of {PRUNERS}, got {pruner!r}")
        texts = objective if isinstance(objective, (list, tuple)) else [objective]
        self.objectives = [Objective.parse(t, "RFOptuna objective") for t in texts]
        if not self.objectives:
            raise ConfigError("RFOptuna: give at least one objective")
        if len(self.objectives) > 1 and pruner is not None:
            raise ConfigError("RFOptuna: Optuna prunes single-objective studies only: pass pruner=None")
        self.n_initial, self.budget, self.min_peers = n_initial, budget, min_peers
        self.sampler_name, self.pruner, self.seed = sampler, pruner, seed
        self.study: Any = None
        self.trials_made = 0
        self.initial_trials: list[Any] = []

    def _sampler(self, drawn: int = 0) -> Any:
        """A new sampler; `drawn`: trials already drawn with this search's seed (a sampler seeded
        alike would draw them again, so the seed moves on by that many)."""
        import optuna

        samplers = {"tpe": optuna.samplers.TPESampler, "cmaes": optuna.samplers.CmaEsSampler}
        return samplers.get(self.sampler_name, optuna.samplers.RandomSampler)(seed=self.seed + drawn)

    def open_study(self, experiment_path: Path) -> None:
        """Persist the study in `<experiment_path>/optuna.db`: the trials drawn so far in memory
        (by `expand`) move there, and the initial trials become handles on the stored ones."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        drawn = self.study
        # A new sampler (TPE caches the study it sampled for), seeded past the draws made so far.
        sampler = self._sampler(len(drawn.trials) if drawn is not None else 0)
        self.study = optuna.create_study(
            storage=f"sqlite:///{Path(experiment_path).resolve() / 'optuna.db'}",
            study_name=Path(experiment_path).name,
            directions=[o.direction for o in self.objectives],
            sampler=sampler,
            load_if_exists=True,
        )
        if drawn is None:
            return
        offset = len(self.study.trials)
        for trial in drawn.get_trials(deepcopy=False):
            self.study.add_trial(trial)
        stored = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        self.initial_trials = [
            optuna.trial.Trial(self.study, stored[offset + t.number]._trial_id) for t in self.initial_trials
        ]

    @property
    def _study(self) -> Any:
        """RapidFire AI's name of the study (`study`)."""
        return self.study

    def _candidates(self) -> list[RFModelConfig]:
        raise ConfigError("RFOptuna draws its configs from Optuna trials: use expand()")

    def ask(self) -> tuple[Any, RunSpec]:
        """A new trial and its validated run spec (a draw that fails validation is told FAIL)."""
        error = None
        for _ in range(10 * self.budget):
            trial = self.study.ask()
            space, path = (List(self.configs), "configs") if len(self.configs) > 1 else (self.configs[0], "")
            mc = suggest(space, trial, path).copy()
            try:
                prepare_run(mc, self.trainer_type)
                check_run(mc, self.trainer_type)
            except ConfigError as exc:  # an invalid corner of the space: not a trial of the budget
                self.study.tell(trial, state=_state("FAIL"))
                error = exc
                continue
            self.trials_made += 1
            return trial, RunSpec(self.trainer_type, mc, flatten_knobs(mc))
        raise ConfigError(f"RFOptuna: no valid config in {10 * self.budget} draws; the last error: {error}")

    def expand(self, strict: bool = True) -> list[RunSpec]:
        """`n_initial` valid draws (an invalid draw is told FAIL and not counted; `strict` has
        nothing to decide)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # In memory until training starts (open_study): a refused run_fit leaves no trial behind.
        directions = [o.direction for o in self.objectives]
        self.study = optuna.create_study(directions=directions, sampler=self._sampler())
        specs = []
        self.initial_trials = []
        for _ in range(self.n_initial):
            trial, spec = self.ask()
            self.initial_trials.append(trial)
            specs.append(spec)
        return specs

    def search_policy(self) -> OptunaPolicy:
        return OptunaPolicy(self)
