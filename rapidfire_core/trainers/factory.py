"""Builds one stock TRL trainer per run, wired to the run controller through callbacks.

The changes to TRL's trainers: the train sampler (`_get_train_sampler` returns the sampler
the controller sets as `rapidfire_sampler`, the run's view of the shared chunk order), and,
only while a run trains in a fused cohort, its model call and backward handed to the cohort
(`trainers.fused_step`). Everything else (loss, schedule, accumulation, clipping, logging,
evaluation) is TRL's own code.

`build_run_trainer` is everything TRL-specific about making one run: its TRL config with the
engine's overrides, its adapter on the shared base model, its formatted datasets, its trainer,
the user's own callbacks (a fresh copy per run) and its generation-metric evaluator.

Which rows the trainer kept. TRL drops rows while it prepares a run's dataset (see
`rapidfire_core.scheduler.chunks`). The training set goes to TRL with one extra column, the
source row of each row; once the trainer is built the column is read (the source row of each
row TRL kept, in order) and removed, so the trainer trains on exactly the columns stock TRL
would have: `RunTrainer.source_rows`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.trainer_callback import PrinterCallback
from trl import DPOTrainer, GRPOTrainer, SFTTrainer

from rapidfire_core.trainers.datasets import FormattedDatasets
from rapidfire_core.trainers.fused_step import FusedStepMixin
from rapidfire_core.trainers.generation_eval import eval_rows_over_raw, make_generation_eval
from rapidfire_core.trainers.model_patches import RunModelSettings, capture_run_settings, sharing_constraints
from rapidfire_core.trainers.shared_models import ModelRegistry
from rapidfire_core.trainers.user_callbacks import EngineEvents, callback_list, run_callbacks

# The source row of each training row, carried through TRL's dataset preparation (module docstring).
SOURCE_ROW_COLUMN = "rapidfire_source_row"


class _ChunkSamplerMixin:
    rapidfire_sampler = None
    rapidfire_resume = None  # a `scheduler.run_checkpoint.RunResume` when the run continues one

    def _get_train_sampler(self, train_dataset=None):
        if self.rapidfire_sampler is None:
            raise RuntimeError("the engine did not set a chunk sampler on this trainer")
        return self.rapidfire_sampler

    # train(resume_from_checkpoint=...) on an engine checkpoint: transformers keeps its own part
    # (trainer state, skipping trained batches); the rest comes from the engine's checkpoint.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.rapidfire_resume is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        # the weights were loaded by the engine through Run.load_adapter_state

    def _load_optimizer_and_scheduler(self, checkpoint):
        if self.rapidfire_resume is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        self.rapidfire_resume.load_optimizer_and_scheduler(self)

    def _load_rng_state(self, checkpoint):
        if self.rapidfire_resume is None:
            return super()._load_rng_state(checkpoint)
        # restored at the run's first step boundary, where it was captured (RunResume.at_first_step)

    def _load_scaler(self, checkpoint):
        if self.rapidfire_resume is None:
            return super()._load_scaler(checkpoint)


class ChunkedSFTTrainer(_ChunkSamplerMixin, FusedStepMixin, SFTTrainer):
    pass


class ChunkedDPOTrainer(_ChunkSamplerMixin, FusedStepMixin, DPOTrainer):
    pass


class ChunkedGRPOTrainer(_ChunkSamplerMixin, GRPOTrainer):
    pass


TRAINER_CLASSES = {"SFT": ChunkedSFTTrainer, "DPO": ChunkedDPOTrainer, "GRPO": ChunkedGRPOTrainer}


@contextlib.contextmanager
def reference_is_base_model(model, adapter_name: str | None) -> Iterator[None]:
    """Keep TRL's DPO/GRPO reference = the base model with adapters disabled.

    Given a PeftModel, TRL's DPO and GRPO trainers look up the adapter named "default" and
    copy it into a new "ref" adapter used for reference log-probs. Our adapters are named per
    run, and with a freshly initialised LoRA (B = 0) the reference is exactly the base model,
    which is what TRL uses when it creates the adapter itself (it then disables adapters for
    the reference pass). So: alias "default" to this run's config while the trainer is built,
    then delete the "ref" adapter TRL added; with no "ref" adapter TRL disables adapters.
    """
    peft_config = getattr(model, "peft_config", None)
    if adapter_name is None or peft_config is None or "default" in peft_config:
        yield
        return
    peft_config["default"] = peft_config[adapter_name]
    try:
        yield
    finally:
        del peft_config["default"]
        if "ref" in peft_config:
            model.delete_adapter("ref")
        model.set_adapter(adapter_name)


def build_trainer(
    trainer_type: str,
    *,
    model,
    tokenizer,
    args,
    adapter_name: str | None,
    train_dataset,
    eval_dataset,
    reward_funcs: Any,
    callbacks: list,
    ref_model: Any = None,
):
    """ref_model: a DPO run's own reference model (`ref_model_name`); None: the base model with
    the run's adapter disabled (`reference_is_base_model`). The trainer's writes on the model object
    are its ``rapidfire_model_settings`` (`trainers.model_patches`)."""
    cls = TRAINER_CLASSES[trainer_type]
    kwargs: dict[str, Any] = dict(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if trainer_type == "GRPO":
        kwargs["reward_funcs"] = reward_funcs
    if ref_model is not None:
        kwargs["ref_model"] = ref_model
    if adapter_name is not None:
        model.set_adapter(adapter_name)
    settings: list[RunModelSettings] = []
    with capture_run_settings(model, settings):
        if trainer_type in ("DPO", "GRPO"):
            with reference_is_base_model(model, adapter_name):
                trainer = cls(**kwargs)
        else:
            trainer = cls(**kwargs)
    # The writes it made on the shared model object, put back whenever this run computes.
    trainer.rapidfire_model_settings = settings[0]
    # With tqdm disabled, transformers prints every log dict; the engine has its own display.
    trainer.remove_callback(PrinterCallback)
    return trainer


@dataclass
class RunTrainer:
    """What `build_run_trainer` makes for one run."""

    trainer: Any
    model: Any  # the shared PeftModel (LoRA) or the run's own model (full fine-tuning)
    adapter_name: str | None
    has_eval: bool
    generation_eval: Callable[[int, float | None], dict[str, float]] | None
    source_rows: list[int] | None = None  # source row of each row the trainer kept; None: all, in place


@contextlib.contextmanager
def quiet_dataset_preparation() -> Iterator[None]:
    """Silence the datasets progress bars TRL prints while it tokenizes a run's data
    ("Tokenizing / Truncating / ..."): about five per run, between the engine's own lines."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def run_args(spec: Any, output_dir: Path, has_eval: bool) -> Any:
    """The run's TRL config: the user's, with the engine's overrides."""
    overrides: dict[str, Any] = dict(
        output_dir=str(output_dir),
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",  # the engine saves each run's final adapter itself
    )
    if not has_eval:
        overrides["eval_strategy"] = "no"
    return spec.training_args(**overrides)


def preload_base(spec: Any, registry: ModelRegistry, output_dir: Path, has_eval: bool) -> None:
    """Create the base model `spec`'s run will attach to, now (see `ModelRegistry.preload`)."""
    args = run_args(spec, output_dir, has_eval)
    registry.preload(spec.create_model_dict(), spec.lora_config(), seed=args.seed,
                     share_key_extra=sharing_constraints(args))  # fmt: skip


def user_callbacks(spec: Any) -> list[Any]:
    """The user's callbacks of a run: RFModelConfig.callbacks, then the training config's."""
    model_config = spec.model_config
    return callback_list(getattr(model_config, "callbacks", None)) + callback_list(
        getattr(model_config.training_args, "callbacks", None)
    )


def _with_source_rows(dataset):
    return dataset.add_column(SOURCE_ROW_COLUMN, list(range(len(dataset))))


def _take_source_rows(trainer, num_rows: int, trainer_type: str) -> list[int] | None:
    """The source row of each training row the trainer kept (None: every row, in place); the
    marker column is removed, so the trainer trains on the columns stock TRL would."""
    dataset = trainer.train_dataset
    if SOURCE_ROW_COLUMN in dataset.column_names:
        rows = list(dataset[SOURCE_ROW_COLUMN])
        trainer.train_dataset = dataset.remove_columns([SOURCE_ROW_COLUMN])
    elif len(dataset) == num_rows:
        rows = list(range(num_rows))
    else:  # a TRL that drops the column and rows: the engine cannot tell which rows remain
        raise RuntimeError(
            f"{type(trainer).__name__} changed the training set from {num_rows} to {len(dataset)} rows "
            "in a way the engine cannot follow (its source-row column was removed)"
        )
    if not rows:
        max_length = getattr(trainer.args, "max_length", None)
        raise ValueError(
            f"{trainer_type}: TRL dropped all {num_rows} training rows while preparing them (with "
            f"max_length={max_length!r} no row keeps a token to train on); raise max_length"
        )
    return None if rows == list(range(num_rows)) else rows


def build_run_trainer(
    spec: Any,
    *,
    run_id: int,
    output_dir: Path,
    registry: ModelRegistry,
    formatted: FormattedDatasets,
    train,
    evals,
    callbacks: list,
    engine_events: EngineEvents | None = None,
) -> RunTrainer:
    """One run's TRL trainer on its adapter (`run_<run_id>`) of the shared base model.

    callbacks: the engine's; the user's own follow them, each a fresh copy for this run that is
    not shown the events `engine_events` (the run's ChunkGate) marks as the engine's."""
    model_config = spec.create_model_dict()
    args = run_args(spec, output_dir, evals is not None)
    mine = user_callbacks(spec)
    if mine:
        if engine_events is None:
            raise ValueError("the run has its own callbacks: build_run_trainer needs engine_events")
        callbacks = list(callbacks) + run_callbacks(mine, engine_events)
    attached = registry.attach(
        model_config,
        spec.lora_config(),
        adapter_name=f"run_{run_id}",
        seed=args.seed,
        share_key_extra=sharing_constraints(args),
    )
    ref_model = None
    if spec.trainer_type == "DPO" and model_config.get("ref_model_name"):
        ref_model = registry.reference(model_config, disable_dropout=args.disable_dropout)
    func = model_config.get("formatting_func")
    with quiet_dataset_preparation():
        train_ds = _with_source_rows(formatted.get(train, func))
        eval_ds = formatted.get(evals, func)
        trainer = build_trainer(
            spec.trainer_type,
            model=attached.model,
            tokenizer=attached.tokenizer,
            args=args,
            adapter_name=attached.adapter_name,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            reward_funcs=model_config.get("reward_funcs"),
            callbacks=callbacks,
            ref_model=ref_model,
        )
    source_rows = _take_source_rows(trainer, len(train), spec.trainer_type)
    generation_eval = None
    compute_metrics = model_config.get("compute_metrics")
    if compute_metrics is not None and eval_ds is not None:
        generation_eval = make_generation_eval(
            attached.model,
            attached.tokenizer,
            eval_rows_over_raw(evals, eval_ds),
            compute_metrics,
            model_config.get("generation_config"),
            batch_size=args.per_device_eval_batch_size,
        )
    return RunTrainer(
        trainer, attached.model, attached.adapter_name, eval_ds is not None, generation_eval, source_rows
    )
