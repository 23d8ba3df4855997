"""`Experiment`: the user's entry point (names and call shapes follow RapidFire AI).

    exp = Experiment("sft-sweep")                       # experiment dir: ./rapidfire_experiments/sft-sweep
    exp.run_fit(RFGridSearch(configs, trainer_type="SFT"), create_model, train_ds, eval_ds,
                num_chunks=4, seed=42)
    exp.get_results()      # one row per (run_id, step): every metric TRL logged
    exp.get_runs_info()    # one row per run: status, error, knobs
    exp.end()

`run_fit` validates everything (configs, datasets, formatting functions) before any training,
builds every run (shared base models, one adapter and one TRL trainer per run), then trains
the runs chunk by chunk (see `rapidfire_core.scheduler.loop`). A run that fails (exception,
OOM, NaN) is marked FAILED with its reason; the others go on.
"""

from __future__ import annotations

import os
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from rapidfire_core.automl.validate import check_grpo_eval_batches, varying_keys
from rapidfire_core.control import RunStatus, RunStore
from rapidfire_core.memory.residency import RunResidency, budget_bytes
from rapidfire_core.scheduler.chunks import ChunkPlan
from rapidfire_core.scheduler.loop import run_chunk_rounds
from rapidfire_core.scheduler.progress import ProgressDisplay
from rapidfire_core.tracking.metric_buffer import MetricBuffer
from rapidfire_core.tracking.mlflow_tracker import MLflowTracker, default_tracking_uri
from rapidfire_core.trainers.callbacks import ChunkGate, MetricsForwarder
from rapidfire_core.trainers.datasets import FormattedDatasets, as_dataset
from rapidfire_core.trainers.execution import RunExecution
from rapidfire_core.trainers.factory import build_trainer, make_sampler
from rapidfire_core.trainers.generation_eval import make_generation_eval
from rapidfire_core.trainers.process_state import ProcessState
from rapidfire_core.trainers.shared_models import ModelRegistry, sharing_constraints

DEFAULT_ROOT_ENV = "RF_EXPERIMENT_PATH"


class Experiment:
    def __init__(
        self,
        experiment_name: str,
        mode: str = "fit",
        experiment_path: str | os.PathLike | None = None,
        tracking_uri: str | None = None,
        verbose: bool = True,
    ) -> None:
        """experiment_path: the root folder of experiments (default $RF_EXPERIMENT_PATH or
        ./rapidfire_experiments); this experiment lives in <root>/<experiment_name>.
        tracking_uri: an MLflow tracking URI; default an SQLite store inside the experiment dir."""
        if not isinstance(experiment_name, str) or not experiment_name.strip():
            raise ValueError("experiment_name must be a non-empty string")
        if mode != "fit":
            raise ValueError(
                f"mode={mode!r} is not supported: rapidfire_core runs training experiments (mode='fit')"
            )
        root = Path(experiment_path or os.environ.get(DEFAULT_ROOT_ENV, "rapidfire_experiments"))
        self.experiment_name = experiment_name
        self.path = (root / experiment_name).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri or default_tracking_uri(self.path)
        self.verbose = verbose
        self._store = RunStore(self.path / "runs.db")
        orphans = self._store.stop_orphaned_runs("the process ended while the run was in flight")
        if orphans:
            self._say(f"Runs {orphans} were left in flight by an earlier process; marked STOPPED")
        self._tracker: MLflowTracker | None = None
        self._open = True
        self._say(f"Experiment '{experiment_name}' at {self.path}")

    # ---- public API ---------------------------------------------------------------------------
    def run_fit(
        self,
        config_group,
        create_model: Callable[[dict[str, Any]], tuple[Any, Any]],
        train_dataset,
        eval_dataset=None,
        num_chunks: int = 4,
        seed: int = 42,
        gpu_state_budget: int | str | None = None,
    ) -> None:
        """Train every configuration of `config_group` chunk by chunk; returns when all are done.

        gpu_state_budget: device memory (bytes, or a string such as "2GiB") for the runs' trainable
        state (adapter weights, optimizer moments, step counters). The run taking its turn is
        always on the device; the others wait in a pinned host pool whenever they do not fit, and
        the next run is prefetched during the current turn. 0 keeps only the running run's state
        on the device. None (default): every run's state stays on the device.
        See `rapidfire_core.memory.residency`."""
        self._check_open()
        state_budget = budget_bytes(gpu_state_budget)  # ValueError naming gpu_state_budget
        if not callable(create_model):
            raise TypeError(
                "create_model must be a callable create_model(model_config) -> (model, tokenizer)"
            )
        specs = config_group.expand()  # raises ConfigError naming the field and config
        if not specs:
            raise ValueError("the config group expanded to no runs")
        trainer_type = specs[0].trainer_type
        train = as_dataset(train_dataset, "train_dataset")
        evals = as_dataset(eval_dataset, "eval_dataset")
        plan = ChunkPlan(len(train), num_chunks, seed)
        formatted = FormattedDatasets(trainer_type)
        for spec in specs:
            model_config = spec.create_model_dict()
            func = model_config.get("formatting_func")
            formatted.check(train, func, "train_dataset")
            if evals is not None:
                eval_columns = formatted.check(evals, func, "eval_dataset")
                if model_config.get("compute_metrics") is not None and "prompt" not in eval_columns:
                    raise ValueError(
                        "compute_metrics generates a completion for each eval row's 'prompt', but the "
                        f"eval rows have {sorted(eval_columns)}: use a prompt/completion format"
                    )
                if trainer_type == "GRPO":
                    check_grpo_eval_batches(spec.model_config.training_args)
            if trainer_type == "GRPO":
                _check_grpo_prompts(spec, len(train), self.path)

        tracker = self._get_tracker()
        buffer = MetricBuffer(self._store, tracker)
        progress = ProgressDisplay(num_chunks, varying_keys([s.knobs for s in specs]), enabled=self.verbose)
        registry = ModelRegistry(create_model)
        self._say(
            f"{len(specs)} {trainer_type} configuration(s), {len(train)} training rows in {num_chunks} chunks"
        )
        runs: list[RunExecution] = []

        def on_turn_end(run: RunExecution) -> None:
            buffer.flush()
            self._store.update_run(
                run.run_id, status=RunStatus.ONGOING, chunks_done=run.rounds_done, global_step=run.global_step
            )
            progress.end_turn(run, RunStatus.ONGOING.value)

        def on_finished(run: RunExecution) -> None:
            buffer.flush()
            if run.worker.error is not None:
                self._fail(run, run.worker.error, run.worker.error_traceback, registry)
            else:
                self._complete(run)
            progress.end_turn(run, self._store.status(run.run_id).value)

        def on_error(run: RunExecution, exc: Exception) -> None:
            self._fail(run, exc, traceback.format_exc(), registry)
            progress.end_turn(run, RunStatus.FAILED.value)

        residency = RunResidency(state_budget) if state_budget is not None else None
        try:
            for index, spec in enumerate(specs):
                run = self._register(spec, index, buffer, progress)
                runs.append(run)
                try:
                    self._prepare(run, spec, registry, plan, formatted, train, evals)
                except Exception as exc:  # noqa: BLE001 - one bad run must not stop the others
                    self._fail(run, exc, traceback.format_exc(), registry)
            run_chunk_rounds(runs, progress, on_turn_end, on_finished, on_error, residency)
        except BaseException:  # KeyboardInterrupt included: leave no run thread behind
            self._stop_unfinished(runs)
            raise
        finally:
            buffer.flush()
            tracker.flush()  # the MLflow store is complete when run_fit returns
        self._summarize(runs)

    def get_results(self) -> pd.DataFrame:
        """One row per (run_id, step) with every logged metric (NaN where not logged at that step)."""
        return self._store.results_frame()

    def get_runs_info(self) -> pd.DataFrame:
        """One row per run: run_id, name, trainer_type, status, error, progress and its knobs."""
        return self._store.runs_frame()

    def end(self) -> None:
        """Close the experiment's stores. Results stay readable on disk."""
        if not self._open:
            return
        self._open = False
        if self._tracker is not None:
            self._tracker.close()
        self._store.close()
        self._say(f"Experiment '{self.experiment_name}' ended; results in {self.path}")

    def __enter__(self) -> Experiment:
        return self

    def __exit__(self, *exc) -> None:
        self.end()

    # ---- internals ----------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"experiment '{self.experiment_name}' has ended; create a new Experiment")

    def _get_tracker(self) -> MLflowTracker:
        if self._tracker is None:
            self._tracker = MLflowTracker(self.experiment_name, self.tracking_uri)
        return self._tracker

    def _register(self, spec, index: int, buffer: MetricBuffer, progress: ProgressDisplay) -> RunExecution:
        knobs = dict(spec.knobs)
        run_id = self._store.create_run(f"run-{index + 1}", spec.trainer_type, knobs)
        name = f"run-{run_id}"
        self._store.update_run(run_id, name=name)
        mlflow_id = self._get_tracker().start_run(
            name, {"trainer_type": spec.trainer_type, **knobs}, tags={"rapidfire.run_id": str(run_id)}
        )
        self._store.update_run(run_id, mlflow_run_id=mlflow_id)
        buffer.register(run_id, mlflow_id)
        return RunExecution(
            run_id=run_id,
            name=name,
            knobs=knobs,
            mlflow_run_id=mlflow_id,
            record=buffer.record,
            on_progress=progress.step,
        )

    def _prepare(self, run, spec, registry, plan, formatted, train, evals) -> None:
        model_config = spec.create_model_dict()
        trainer_type = spec.trainer_type
        overrides: dict[str, Any] = dict(
            output_dir=str(self.path / "runs" / str(run.run_id)),
            report_to="none",
            disable_tqdm=True,
            save_strategy="no",  # the engine saves each run's final adapter itself
        )
        if evals is None:
            overrides["eval_strategy"] = "no"
        args = spec.training_args(**overrides)
        share_extra = sharing_constraints(args)
        attached = registry.attach(
            model_config,
            spec.lora_config(),
            adapter_name=f"run_{run.run_id}",
            seed=args.seed,
            share_key_extra=share_extra,
        )
        func = model_config.get("formatting_func")
        train_ds = formatted.get(train, func)
        eval_ds = formatted.get(evals, func)
        run.model, run.adapter_name = attached.model, attached.adapter_name
        run.has_eval = eval_ds is not None
        trainer = build_trainer(
            trainer_type,
            model=attached.model,
            tokenizer=attached.tokenizer,
            args=args,
            adapter_name=attached.adapter_name,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            reward_funcs=model_config.get("reward_funcs"),
            callbacks=[ChunkGate(run), MetricsForwarder(run)],
        )
        # transformers' Trainer.__init__ re-seeds with args.seed; a stock run starts train() from
        # the RNG state its trainer's __init__ leaves, so that is the state this run starts from.
        run.process_state = ProcessState.capture()
        run.sampler = make_sampler(trainer_type, trainer, plan)
        trainer.rapidfire_sampler = run.sampler
        run.trainer = trainer
        compute_metrics = model_config.get("compute_metrics")
        if compute_metrics is not None and eval_ds is not None:
            run.generation_eval = make_generation_eval(
                attached.model,
                attached.tokenizer,
                eval_ds.to_list(),
                compute_metrics,
                model_config.get("generation_config"),
                batch_size=args.per_device_eval_batch_size,
            )
        run.start_worker()

    def _fail(self, run: RunExecution, exc: BaseException, tb: str | None, registry: ModelRegistry) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        run.error = reason
        self._store.update_run(run.run_id, status=RunStatus.FAILED, error=reason, global_step=run.global_step)
        self._get_tracker().end_run(run.mlflow_run_id, "FAILED")
        if run.worker is not None and not run.worker.finished:
            run.worker.abort()
        if run.adapter_name is not None and run.model is not None:
            registry.remove_adapter(run.model, run.adapter_name)
        run.release()
        _free_accelerator_memory()
        self._say(f"run {run.run_id} FAILED: {reason}")
        if tb and os.environ.get("RAPIDFIRE_DEBUG"):
            self._say(tb)

    def _stop_unfinished(self, runs: list[RunExecution]) -> None:
        # The run holding the turn (still training when the interrupt came) stops first, at its
        # next step: paused runs are only woken, to unwind, once no other run is executing.
        for run in sorted(runs, key=lambda r: not (r.worker is not None and r.worker.has_turn)):
            if run.error is not None or (run.worker is not None and run.worker.finished):
                continue  # already FAILED or finished and recorded
            if run.worker is not None:
                run.worker.abort()
            self._store.update_run(
                run.run_id,
                status=RunStatus.STOPPED,
                error="run_fit was interrupted",
                global_step=run.global_step,
            )
            self._get_tracker().end_run(run.mlflow_run_id, "KILLED")
            run.release()
            self._say(f"run {run.run_id} STOPPED (run_fit was interrupted)")

    def _complete(self, run: RunExecution) -> None:
        out = self.path / "runs" / str(run.run_id)
        if run.adapter_name is not None:
            save_adapter(run.model, run.adapter_name, out / "adapter")
        else:  # full fine-tuning: the run's own model
            run.model.save_pretrained(str(out / "model"))
        self._store.update_run(
            run.run_id, status=RunStatus.COMPLETED, chunks_done=run.rounds_done, global_step=run.global_step
        )
        self._get_tracker().end_run(run.mlflow_run_id, "FINISHED")
        run.release()

    def _summarize(self, runs: list[RunExecution]) -> None:
        info = self.get_runs_info()
        mine = info[info["run_id"].isin([r.run_id for r in runs])]
        counts = mine["status"].value_counts().to_dict()
        self._say("Done: " + ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items())))
        self._say(f"Saved under {self.path / 'runs'}/<run_id>/: adapter/ (LoRA) or model/ (full fine-tuning)")
        self._say(f"MLflow: {self._get_tracker().ui_hint()}")


def save_adapter(model, adapter_name: str, out_dir: Path) -> None:
    """Write one run's adapter so that `PeftModel.from_pretrained(base, out_dir)` loads it."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=[adapter_name])
    src = tmp / adapter_name if (tmp / adapter_name).is_dir() else tmp
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.move(str(src), str(out_dir))
    shutil.rmtree(tmp, ignore_errors=True)


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


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()  # a failed step's tensors may sit in reference cycles (frames, autograd graph)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
