"""`Experiment`: the user's entry point (names and call shapes follow RapidFire AI).

    exp = Experiment("sft-sweep")                       # experiment dir: ./rapidfire_experiments/sft-sweep
    exp.run_fit(RFGridSearch(configs, trainer_type="SFT"), create_model, train_ds, eval_ds,
                num_chunks=4, seed=42)
    exp.get_results()      # one row per (run_id, step): every metric TRL logged
    exp.get_runs_info()    # one row per run: status, error, knobs
    exp.end()

Steering a sweep while it trains (from another thread, e.g. a notebook cell after
`run_fit(..., background=True)`, or from another process through the CLI or the dashboard,
which write the same commands):

    handle = exp.run_fit(..., background=True)
    exp.stop_run(2); exp.resume_run(2); exp.delete_run(3)
    cmd = exp.wait_for(exp.clone_run(1, {"learning_rate": 1e-4}, warm_start=True))
    cmd.new_run_id
    handle.wait()

`run_fit` validates everything (configs, datasets, formatting functions) before any training,
then hands the runs to the experiment's run controller (`rapidfire_core.scheduler.controller`),
which builds them and trains them chunk by chunk. A run that fails (exception, OOM, NaN) is
marked FAILED with its reason; the others go on. `run_fit` returns when no run is NEW or
ONGOING: a run STOPPED by a command stays parked, with all its state, and `continue_fit()`
trains it after a `resume_run`.

After a crash or an interrupt, `run_fit` with the same arguments continues the sweep from each
run's last chunk checkpoint (`rapidfire_core.scheduler.resume`, `scheduler.run_checkpoint`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rapidfire_core import layout
from rapidfire_core.automl.metric_names import metric_names_of_sweep
from rapidfire_core.automl.validate import check_grpo_eval_batches, varying_keys
from rapidfire_core.cluster.ray_runtime import executors_requested
from rapidfire_core.control import Command, CommandStore, RunStore
from rapidfire_core.control.experiment_name import check_experiment_name
from rapidfire_core.control.log_files import ExperimentLogs, TrainingLog, log_file_path
from rapidfire_core.control.orphans import settle_orphans
from rapidfire_core.fit.arguments import (
    check_monte_carlo_simulations,
    check_num_cpus,
    check_num_gpus,
    cpu_threads,
)
from rapidfire_core.fit.rerun import choose_experiment
from rapidfire_core.memory.residency import budget_bytes
from rapidfire_core.scheduler.chunks import ChunkPlan
from rapidfire_core.scheduler.cohort import EXECUTIONS
from rapidfire_core.scheduler.controller import RunController
from rapidfire_core.scheduler.progress import ProgressDisplay
from rapidfire_core.scheduler.resume import ResumeMismatch, plan_resume, run_fingerprint
from rapidfire_core.scheduler.run import FitData
from rapidfire_core.tracking.fanout import Trackers
from rapidfire_core.tracking.mlflow_tracker import default_tracking_uri
from rapidfire_core.tracking.selection import build_trackers, chosen_trackers
from rapidfire_core.trainers.datasets import FormattedDatasets, as_dataset
from rapidfire_core.trainers.factory import preload_base
from rapidfire_core.trainers.generation_eval import generation_columns_problem
from rapidfire_core.trainers.shared_models import ModelRegistry


class Experiment:
    def __init__(
        self,
        experiment_name: str,
        mode: str = "fit",
        experiment_path: str | os.PathLike | None = None,
        tracking_uri: str | None = None,
        verbose: bool = True,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        trackers: list[str] | None = None,
        cluster: str | None = None,
    ) -> None:
        """experiment_path: the root folder of experiments (default $RF_EXPERIMENT_PATH or
        ./rapidfire_experiments); this experiment lives in <root>/<experiment_name>.
        tracking_uri: an MLflow tracking URI; default an SQLite store inside the experiment dir.
        experiment_name must be one folder name (`control.experiment_name`): ValueError otherwise.
        num_cpus / num_gpus: RapidFire AI's resource arguments (`fit.arguments`: num_cpus sets the
        training's CPU threads). num_gpus=N >= 2 trains on N executors, one per device, on Ray
        (docs/scale-out.md); without a GPU, N CPU executors of num_cpus threads each. cluster: a
        Ray address ("auto", "ray://host:10001") to train there (num_gpus executors, default 1);
        a Ray already initialised in this process is used as it is.
        trackers: the tracking backends, of "mlflow", "tensorboard", "trackio", "wandb" (default:
        the RF_*_ENABLED switches, MLflow alone when none is set; see `tracking.selection`).

        Attributes as RapidFire AI's: `mode` ("fit"), `experiment_name`, `experiment_path` (the
        root folder), `experiment_id` (the MLflow experiment id; None without MLflow); `path` is
        this experiment's folder."""
        check_experiment_name(experiment_name)
        if mode != "fit":
            raise ValueError(
                f"mode={mode!r} is not supported: rapidfire_core runs training experiments (mode='fit')"
            )
        root = layout.experiments_root(experiment_path)
        self.mode = mode
        self.verbose = verbose
        self._num_cpus = check_num_cpus(num_cpus)
        self._cluster = cluster
        self._executors = executors_requested(num_gpus, cluster)
        if self._executors is None:
            check_num_gpus(num_gpus, "Experiment")
        self._tracker_names = chosen_trackers(trackers)  # ValueError for a bad name or switch now
        self._given_tracking_uri = tracking_uri
        self._open_at(root, experiment_name)

    def _open_at(self, root: Path, experiment_name: str, announce: bool = True) -> None:
        """Open (creating it if new) the experiment `root/experiment_name` as this object's.

        Opening takes no owner lease and writes no log line (a reader never blocks a trainer);
        storage this process cannot write is opened for reading only."""
        self.experiment_name = experiment_name
        self.path = layout.experiment_dir(root, experiment_name).resolve()
        self.experiment_path = self.path.parent
        if not layout.is_experiment_dir(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        self._writable = os.access(self.path, os.W_OK)  # False on read-only storage: read only
        self.tracking_uri = self._given_tracking_uri or default_tracking_uri(self.path)
        self._logs: ExperimentLogs | None = None  # opened when this object first trains or tracks
        self._store = RunStore(layout.runs_db(self.path), read_only=not self._writable)
        self._commands = CommandStore(layout.runs_db(self.path), read_only=not self._writable)
        self._tracker: Trackers | None = None
        self._controller: RunController | None = None
        self._fit: FitHandle | None = None
        self._shown_knobs: list[str] = []  # the knobs the progress lines show (those that vary)
        self._open = True
        # Runs a dead process left in flight are settled now, unless a live process trains the
        # experiment. No lease is taken (a trainer starting meanwhile is never refused), and
        # storage this process cannot write is only read.
        if self._writable:
            settled, orphans = self._commands.unless_owned(settle_orphans)
            if not settled:
                self._say("Another process is training this experiment now: its runs are left as they are")
            elif orphans:
                self._get_controller().end_orphaned_tracking(orphans)
        else:
            self._say("This process cannot write the experiment's folder: it is opened for reading only")
        if announce:
            self._say(f"Experiment '{experiment_name}' at {self.path}")

    def _follow_rerun(self, fingerprints: list[str], resume: bool | None, automatic: bool) -> None:
        """Train in the experiment `fit.rerun` chooses for this run_fit (a notebook re-run of a
        finished or changed sweep: `<name>_1`), saying so in one line when it is another."""
        choice = choose_experiment(
            self.experiment_path, self.experiment_name, self._stored_runs_of, fingerprints, resume, automatic
        )
        if choice.name != self.experiment_name:
            self._switch_to(choice.name)
        if choice.notice:
            self._say(choice.notice)

    def _stored_runs_of(self, name: str) -> list[dict[str, Any]]:
        if name == self.experiment_name:
            return self._store.runs()
        other = RunStore(layout.runs_db(layout.experiment_dir(self.experiment_path, name)), read_only=True)
        try:
            return other.runs()
        finally:
            other.close()

    def _switch_to(self, experiment_name: str) -> None:
        """Close this experiment's stores and open `experiment_name` beside it (`fit.rerun`)."""
        for closable in (self._controller, self._tracker, self._commands, self._store, self._logs):
            if closable is not None:
                closable.close()
        self._open_at(self.experiment_path, experiment_name, announce=False)

    # ---- training -----------------------------------------------------------------------------
    def run_fit(
        self,
        config_group,
        create_model: Callable[[dict[str, Any]], tuple[Any, Any]],
        train_dataset,
        eval_dataset=None,
        num_chunks: int | None = None,
        seed: int = 42,
        gpu_state_budget: int | str | None = None,
        *,
        num_shards: int | None = None,
        background: bool = False,
        execution: str = "auto",
        num_gpus: int | None = None,
        monte_carlo_simulations: int | None = None,
        resume: bool | None = None,
        strict: bool = False,
    ) -> FitHandle | None:
        """Train every configuration of `config_group` chunk by chunk.

        Returns when no run is NEW or ONGOING (runs stopped by a command stay parked: see
        `continue_fit`). With `background=True` it returns a `FitHandle` at once, after
        validation (bad input still raises here), and trains in a background thread; the
        caller steers with `stop_run` / `resume_run` / `delete_run` / `clone_run` and waits
        with `handle.wait()`.

        num_chunks (alias num_shards, RapidFire AI 0.16.2's name): chunks the training set is
        split into (default 4).
        gpu_state_budget: device memory (bytes, or a string such as "2GiB") for the runs' trainable
        state (adapter weights, optimizer moments, step counters). The run taking its turn is
        always on the device; the others wait in a pinned host pool whenever they do not fit, and
        the next run is prefetched during the current turn. 0 keeps only the running run's state
        on the device. None (default): every run's state stays on the device.
        See `rapidfire_core.memory.residency`.
        execution: "fused" trains the LoRA runs that share a base model and trainer type as fused
        cohorts (SFT, DPO: one forward and backward per step for all of them; GRPO: one batched
        generation), see `rapidfire_core.scheduler.cohort`; the rest, and every run under "sliced",
        take turns. "auto" (default) fuses where it is faster: on CUDA, and GRPO on a CPU
        (`scheduler.cohort.auto_fuses`, docs/fidelity.md).
        num_gpus, monte_carlo_simulations: RapidFire AI's; accepted, each warned about once when it
        has no effect here (`rapidfire_core.fit.arguments`).

        resume: what a call on an experiment that already holds runs means
        (`rapidfire_core.scheduler.resume`). None (default): continue the stored sweep made by
        the same arguments (after a crash or an interrupt, every unfinished run continues from
        its last chunk checkpoint; finished runs stay as they are), or start the first sweep;
        configs that match no stored sweep raise ResumeMismatch saying what differs. True: only
        continue. False: start a new sweep beside the stored runs.
        A second run_fit while another live process trains the experiment raises ExperimentBusy.

        strict: False (default): an invalid config fails alone (its run is FAILED with the reason
        before training starts) while the valid ones train; ConfigError only if none is valid.
        True: any invalid config refuses the whole sweep (ConfigError listing every one)."""
        self._check_open()
        self._check_no_fit()
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
        check_num_gpus(num_gpus, "run_fit")
        check_monte_carlo_simulations(monte_carlo_simulations)
        if num_shards is not None:
            if num_chunks is not None and num_chunks != num_shards:
                raise ValueError(f"num_chunks={num_chunks} and num_shards={num_shards} disagree: give one")
            num_chunks = num_shards
        num_chunks = 4 if num_chunks is None else num_chunks
        state_budget = budget_bytes(gpu_state_budget)  # ValueError naming gpu_state_budget
        if not callable(create_model):
            raise TypeError(
                "create_model must be a callable create_model(model_config) -> (model, tokenizer)"
            )
        # An automatic search (ASHA, Optuna, PBT) decides at round ends: see automl/policy.py.
        policy = config_group.search_policy() if hasattr(config_group, "search_policy") else None
        specs = config_group.expand(strict=strict)  # ConfigError naming the field and config
        valid = [spec for spec in specs if spec.error is None]
        if not specs:
            raise ValueError("the config group expanded to no runs")
        trainer_type = specs[0].trainer_type
        train = as_dataset(train_dataset, "train_dataset")
        evals = as_dataset(eval_dataset, "eval_dataset")
        plan = ChunkPlan(len(train), num_chunks, seed)
        formatted = FormattedDatasets(trainer_type)
        for spec in valid:
            model_config = spec.create_model_dict()
            func = model_config.get("formatting_func")
            formatted.check(train, func, "train_dataset")
            if evals is not None:
                eval_columns = formatted.check(evals, func, "eval_dataset")
                problem = generation_columns_problem(eval_columns | set(evals.column_names))
                if model_config.get("compute_metrics") is not None and problem:
                    raise ValueError(problem)
                if trainer_type == "GRPO":
                    check_grpo_eval_batches(spec.model_config.training_args)
            if trainer_type == "GRPO":
                _check_grpo_prompts(spec, len(train), self.path)

        if policy is not None:
            policy.check(has_eval=evals is not None, metrics=metric_names_of_sweep(valid, evals, formatted))
        data = FitData(
            trainer_type, plan, train, evals, formatted, ModelRegistry(create_model), num_chunks, execution
        )
        # The first model now, so a create_model that returns the wrong thing raises here, before
        # any run exists (its ordinary errors fail only the run that needs the model).
        preload_base(valid[0], data.registry, layout.runs_dir(self.path), evals is not None)
        shown = varying_keys([s.knobs for s in specs])
        fingerprints = [run_fingerprint(spec, data) for spec in specs]
        self._follow_rerun(fingerprints, resume, automatic=policy is not None)
        controller = self._own()
        try:
            plan = plan_resume(self._store.runs(), specs, fingerprints, resume, self.experiment_name)
            if plan is not None and policy is not None:
                raise ResumeMismatch(
                    f"experiment '{self.experiment_name}' holds this {type(config_group).__name__}'s runs; "
                    "continuing an automatic search after a crash is not supported yet (its decisions so "
                    "far are not persisted): pass resume=False for a new sweep, or use a new experiment name"
                )
            self._say(
                f"{len(specs)} {trainer_type} configuration(s), {len(train)} training rows in {num_chunks} "
                "chunks" + (f" (continuing sweep {plan.sweep})" if plan is not None else "")
            )
            self._shown_knobs = shown
            progress = self._progress()
            controller.progress = progress  # an invalid config's FAILED line shows from here
            registered = None
            if plan is None:  # every run is in the store (NEW, or FAILED) when run_fit returns
                registered = controller.register_runs(specs, data)
        except BaseException:
            controller.give_up_ownership()
            raise

        def fit(controller: RunController) -> None:
            run_ids = controller.take_runs(specs, data, plan, progress, registered)
            for line in controller.execution_summary(run_ids):
                self._say(line)
            if policy is not None:
                policy.bind(self.path)  # its study is stored only now that training starts
            self._train(controller, state_budget, progress, policy, run_ids)

        return self._start(fit, background)

    def continue_fit(
        self, background: bool = False, gpu_state_budget: int | str | None = None
    ) -> FitHandle | None:
        """Train the runs this experiment holds until none is NEW or ONGOING, after applying the
        pending commands (e.g. `resume_run` of a run that `run_fit` left STOPPED)."""
        self._check_open()
        self._check_no_fit()
        state_budget = budget_bytes(gpu_state_budget)
        self._own()

        def fit(controller: RunController) -> None:
            self._train(controller, state_budget, self._progress())

        return self._start(fit, background)

    def _own(self) -> RunController:
        """The controller, owning the experiment (`RunController.take_ownership`: ExperimentBusy if
        another live process trains it). `_start` gives it back."""
        controller = self._get_controller()
        controller.take_ownership()
        self._open_logs()
        return controller

    def _start(self, fit: Callable[[RunController], None], background: bool) -> FitHandle | None:
        controller = self._get_controller()
        handle = FitHandle(controller)
        self._fit = handle

        def owned(controller: RunController) -> None:
            try:
                fit(controller)
            finally:
                controller.give_up_ownership()

        if not background:
            try:
                owned(controller)
            finally:
                self._fit = None
            return None
        handle._start(owned)
        return handle

    def _train(
        self,
        controller: RunController,
        state_budget: int | None,
        progress: ProgressDisplay,
        policy: Any = None,
        run_ids: Sequence[int] = (),
    ) -> None:
        self._say(
            f"Watch and steer it live: rapidfire dashboard {self.path.parent}  "
            f"(or rapidfire runs|stop|resume|delete|clone {self.path})"
        )
        with cpu_threads(self._num_cpus):
            controller.run(state_budget, progress, policy, run_ids)
        self._summarize()

    # ---- steering (IC Ops) ----------------------------------------------------------------------
    def stop_run(self, run_id: int) -> Command:
        """Park a NEW or ONGOING run at its next optimizer step (STOPPED, all state kept)."""
        return self._commands.submit("stop", run_id, source="python")

    def resume_run(self, run_id: int) -> Command:
        """A STOPPED run continues exactly where it stopped."""
        return self._commands.submit("resume", run_id, source="python")

    def delete_run(self, run_id: int) -> Command:
        """End a run and free its memory (DELETED); its logged rows stay queryable."""
        return self._commands.submit("delete", run_id, source="python")

    def clone_run(
        self, run_id: int, changes: dict[str, Any] | None = None, warm_start: bool = False
    ) -> Command:
        """A new run from `run_id`'s config with `changes` ({"learning_rate": 1e-4, "peft.r": 16});
        warm_start: start from the parent's adapter weights and position in the data. The new
        run's id is `wait_for(command).new_run_id`."""
        payload = {"changes": dict(changes or {}), "warm_start": warm_start}
        return self._commands.submit("clone", run_id, payload, source="python")

    def wait_for(self, command: Command | int, timeout: float | None = 60.0) -> Command:
        """The command once applied or failed (TimeoutError after `timeout` seconds)."""
        command_id = command.command_id if isinstance(command, Command) else int(command)
        return self._commands.wait(command_id, timeout)

    def cancel_current(self) -> None:
        """RapidFire AI's: cancel the fit in flight, if any (from another thread or cell). Every
        unfinished run stops at its next step (STOPPED, resumable with `resume_run` +
        `continue_fit`); a blocking `run_fit` then raises FitCancelled, a background one's
        `wait()` does. Waits for a background fit to unwind."""
        fit = self._fit
        if fit is None or (fit.background and fit.done):
            self._say("No fit is in flight: nothing to cancel")
            return
        fit.cancel()
        fit.wait(raise_errors=False)
        self._say("Cancelled the fit in flight")

    def get_log_file_path(self, log_type: str | None = None) -> Path:
        """The experiment's log file of `log_type`: "main" / "experiment" (default; what the
        experiment prints, turns, commands, failures) or "training" (each run's metric rows,
        TRL/transformers warnings). Both are appended as training goes (`control.log_files`)."""
        return log_file_path(self.path, log_type)

    @property
    def experiment_id(self) -> str | None:
        """The MLflow experiment id of this experiment (None when MLflow is not a tracker)."""
        return self._get_tracker().experiment_id

    def get_commands(self) -> pd.DataFrame:
        """The history of commands: id, op, run, payload, source, status, result, error, times."""
        return pd.DataFrame.from_records([c.to_dict() for c in self._commands.all()])

    # ---- results ----------------------------------------------------------------------------------
    def get_results(self) -> pd.DataFrame:
        """One row per (run_id, step) with every logged metric (NaN where not logged at that step)."""
        return self._store.results_frame()

    def get_runs_info(self) -> pd.DataFrame:
        """One row per run: run_id, name, trainer_type, status, error, progress, parent, knobs."""
        return self._store.runs_frame()

    def end(self) -> None:
        """Close the experiment's stores (parked runs' threads end). Results stay readable on disk."""
        if not self._open:
            return
        if self._fit is not None:
            self._fit.cancel()
            self._fit.wait(raise_errors=False)
        self._open = False
        if self._controller is not None:
            self._controller.close()
        if self._tracker is not None:
            self._tracker.close()
        self._commands.close()
        self._store.close()
        self._say(f"Experiment '{self.experiment_name}' ended; results in {self.path}")
        if self._logs is not None:
            self._logs.close()

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc) -> None:
        self.end()

    # ---- internals ----------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self._logs is not None:
            self._logs.main.write(text)
        if self.verbose:
            print(text, flush=True)

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"experiment '{self.experiment_name}' has ended; create a new Experiment")

    def _check_no_fit(self) -> None:
        if self._fit is not None and not self._fit.done:
            raise RuntimeError("a fit of this experiment is still training: wait() for its handle first")

    def _get_tracker(self) -> Trackers:
        if self._tracker is None:
            self._tracker = build_trackers(
                self._tracker_names,
                self.experiment_name,
                self.path,
                self.tracking_uri,
                TrainingLog(self._open_logs().training),
            )
        return self._tracker

    def _progress(self) -> ProgressDisplay:
        """The display of a fit's turns (printed when verbose; always in the experiment's log)."""
        return ProgressDisplay(self._shown_knobs, enabled=self.verbose, log=self._open_logs().main.write)

    def _open_logs(self) -> ExperimentLogs:
        """The experiment's log files, opened for appending when this object first writes (a
        fit, tracking): opening an experiment to read its results writes nothing."""
        if self._logs is None:
            self._logs = ExperimentLogs(self.path)
        return self._logs

    @property
    def controller(self) -> RunController:
        """The experiment's run controller (its `hooks` are the loop's seams)."""
        return self._get_controller()

    def _get_controller(self) -> RunController:
        if self._controller is None:
            args = (self.path, self._store, self._commands, self._get_tracker(), self._say)
            if self._executors is None:
                self._controller = RunController(*args)
            else:  # several devices or a cluster: executors on Ray (docs/scale-out.md)
                from rapidfire_core.cluster.scale_out import scaled_out_controller

                self._controller = scaled_out_controller(
                    *args, count=self._executors, cluster=self._cluster, threads=self._num_cpus
                )
        return self._controller

    def _summarize(self) -> None:
        runs = [r for r in self._store.runs() if r["run_id"] in self._controller.made]
        counts: dict[str, int] = {}
        for run in runs:
            counts[run["status"]] = counts.get(run["status"], 0) + 1
        self._say("Done: " + ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items())))
        runs = layout.runs_dir(self.path)
        self._say(f"Saved under {runs}/<run_id>/: adapter/ (LoRA) or model/ (full fine-tuning)")
        self._say(f"Tracking: {self._get_tracker().ui_hint()}")


class FitHandle:
    """A `run_fit(..., background=True)` training in a background thread."""

    def __init__(self, controller: RunController) -> None:
        self.controller = controller
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _start(self, fit: Callable[[RunController], None]) -> None:
        def main() -> None:
            try:
                fit(self.controller)
            except BaseException as exc:  # noqa: BLE001 - handed to wait()
                self._error = exc

        self._thread = threading.Thread(target=main, name="rapidfire-fit", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    @property
    def background(self) -> bool:
        """Trains in its own thread (`run_fit(..., background=True)`)."""
        return self._thread is not None

    def wait(self, timeout: float | None = None, raise_errors: bool = True) -> bool:
        """Block until training returns (True) or `timeout` passes (False); re-raises its error."""
        if self._thread is not None:
            self._thread.join(timeout)
        if not self.done:
            return False
        if raise_errors and self._error is not None:
            error, self._error = self._error, None
            raise error
        return True

    def cancel(self) -> None:
        """Stop every unfinished run at its next step (they become STOPPED); `wait()` then
        raises FitCancelled."""
        self.controller.cancel()


def _check_grpo_prompts(spec, num_rows: int, scratch: Path) -> None:
    """A GRPO generation batch draws whole prompts: the training set must hold at least one batch."""
    args = spec.training_args(output_dir=str(scratch / "validation"), report_to="none")
    prompts = args.generation_batch_size // args.num_generations
    if num_rows < prompts:
        raise ValueError(
            f"GRPO: one generation batch needs {prompts} prompts (generation_batch_size "
            f"{args.generation_batch_size} / num_generations {args.num_generations}), but train_dataset "
            f"has {num_rows} rows"
        )
