"""One run in flight: its TRL trainer, its training thread, its place in the chunk order.

A `Run` is complete when constructed: it builds its trainer (on its adapter of the shared
base model), its chunk sampler (over the rows its trainer kept, from a position in plan rows:
0, or its warm-start parent's; see `scheduler.chunks`) and its worker thread, and captures the
process state its training starts from. The controller gives it turns (`take_turn`); inside a
turn the run trains until, at the start of an optimizer step,

    - it has completed a chunk          -> the turn ends (TurnEnd.CHUNK)
    - commands are waiting              -> it pauses so the controller applies them
                                           (TurnEnd.COMMANDS); the controller then continues
                                           the same turn unless a command ended or parked it
    - the controller aborted it         -> RunAborted unwinds its train()
    - its train() returns or raises     -> TurnEnd.FINISHED (worker.error holds an exception)
    - (fused) it hands its cohort work  -> TurnEnd.FUSED (`scheduler.cohort`; `slot` says what)

Pausing captures the run's process state (RNG streams, accelerate singletons, TF32) and
resuming restores it, so a run that is paused for commands, stopped and resumed, or that waits
while siblings train, follows exactly the trajectory it would have followed alone.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rapidfire_core.control.faults import fault_point
from rapidfire_core.lora.peft_segments import switch_active_adapter
from rapidfire_core.scheduler.chunks import ChunkPlan, make_sampler
from rapidfire_core.scheduler.cohort import auto_fuses, member_parameters
from rapidfire_core.scheduler.run_checkpoint import RunResume
from rapidfire_core.scheduler.worker import RunAborted, RunWorker
from rapidfire_core.trainers.callbacks import ChunkGate, MetricsForwarder
from rapidfire_core.trainers.datasets import FormattedDatasets
from rapidfire_core.trainers.factory import build_run_trainer
from rapidfire_core.trainers.fused_step import (
    FusedSlot,
    UnfusableRun,
    bind_run_thread,
    check_fusable_args,
    install_fused_generate,
)
from rapidfire_core.trainers.process_state import ProcessState
from rapidfire_core.trainers.run_clock import RunClock, own_runtime_metrics
from rapidfire_core.trainers.shared_models import ModelRegistry
from rapidfire_core.trainers.warm_start import WarmStart


class TurnEnd(enum.Enum):
    CHUNK = "chunk"
    COMMANDS = "commands"
    FINISHED = "finished"
    FUSED = "fused"  # waits in a fused cohort step (scheduler.cohort)


@dataclass
class FitData:
    """What the runs of one `run_fit` share: data, chunk order, base models."""

    trainer_type: str
    plan: ChunkPlan
    train: Any  # datasets.Dataset
    evals: Any  # datasets.Dataset or None
    formatted: FormattedDatasets
    registry: ModelRegistry
    num_chunks: int
    execution: str = "auto"  # "fused": fuse the runs that can; "auto": where it pays (cohort.auto_fuses)


@dataclass
class RunHooks:
    """The controller's side of a run: where metrics go, what a step boundary asks."""

    record: Callable[[int, int, float | None, int, dict[str, float]], None]
    """record(run_id, step, epoch, chunk, metrics): the experiment's metric sink."""
    on_progress: Callable[[Run], None]
    should_pause: Callable[[], bool]
    """True when the running run should pause at this step boundary (commands are waiting)."""


class Run:
    """A run in flight (module docstring). Built in the controller's thread."""

    def __init__(
        self,
        *,
        run_id: int,
        name: str,
        spec: Any,
        knobs: dict[str, Any],
        mlflow_run_id: str,
        data: FitData,
        hooks: RunHooks,
        output_dir: Path,
        start_position: int = 0,
        warm_start: WarmStart | None = None,
    ) -> None:
        self.run_id = run_id
        self.name = name
        self.spec = spec
        self.knobs = knobs
        self.mlflow_run_id = mlflow_run_id
        self.data = data
        self.hooks = hooks
        self.warm_start = warm_start
        self.global_step = 0
        self.max_steps = 0
        self.latest: dict[str, float] = {}
        self.current_chunk = 1  # the chunk (counted across epochs) being trained: labels metrics
        self._pause_reason = TurnEnd.CHUNK
        self._model_training: bool | None = None  # the shared model's mode when the run paused
        self.clock = RunClock()  # the time it waits paused: out of its train_runtime

        self.gate = ChunkGate(self)
        callbacks = [self.gate, MetricsForwarder(self)]
        if warm_start is not None:
            callbacks.append(warm_start.callback())
        built = build_run_trainer(
            spec,
            run_id=run_id,
            output_dir=output_dir,
            registry=data.registry,
            formatted=data.formatted,
            train=data.train,
            evals=data.evals,
            callbacks=callbacks,
            engine_events=self.gate,
        )
        self.trainer = built.trainer
        self.model = built.model
        self.adapter_name = built.adapter_name
        # What its trainer wrote on the (shared) model object: made current whenever it computes.
        self.model_settings = self.trainer.rapidfire_model_settings
        self.has_eval = built.has_eval
        self.generation_eval = built.generation_eval
        if warm_start is not None:
            warm_start.apply_weights(self.model, self.adapter_name)
        self.sampler = make_sampler(
            spec.trainer_type, self.trainer, data.plan, start_position, source_rows=built.source_rows
        )
        self.trainer.rapidfire_sampler = self.sampler
        self.slot: FusedSlot | None = None  # set when the run can fuse; used during cohort turns
        self.cohort_key: tuple | None = None  # runs with equal keys fuse (scheduler.cohort)
        self.unfused_reason = self._plan_fusion(data.execution)
        # A run whose trainer dropped the first chunk(s) whole has completed them already.
        self.chunks_done = self.sampler.chunks_done(self.sampler.start_position)
        self.current_chunk = self.chunks_done + 1
        # transformers' Trainer.__init__ re-seeds with args.seed; a stock run starts train() from
        # the RNG state its trainer's __init__ leaves, so that is the state this run starts from.
        self.process_state: ProcessState | None = ProcessState.capture()
        self.resume: RunResume | None = None  # set by `continue_from` (crash-resume)
        self._resume_pending = False
        # torch's intra-op thread count is per OS thread: a new thread would start at the default
        # (all cores), not at what the caller set (`torch.set_num_threads`). The run's thread
        # uses the controller's as of the run's first turn, as the same code run alone would.
        self.intra_op_threads = torch.get_num_threads()
        self.worker = RunWorker(name, self._train)

    def _plan_fusion(self, execution: str) -> str | None:
        """Give the run a fused-step slot if it can fuse; else the reason it trains time-sliced."""
        from rapidfire_core.lora.peft_segments import UnfusableAdapter, check_fusable

        if execution == "sliced":
            return "execution='sliced'"
        device = next(self.model.parameters()).device
        if execution == "auto" and not auto_fuses(self.spec.trainer_type, device):
            kind = self.spec.trainer_type
            return f"execution='auto' time-slices {kind} on {device.type.upper()}, where it is faster"
        if self.adapter_name is None:
            return "full fine-tuning (no LoRA adapter)"
        if getattr(self.trainer, "ref_model", None) is not None:  # a cohort's reference is the base
            return "its own DPO reference model (ref_model_name)"
        try:
            check_fusable_args(self.spec.trainer_type, self.trainer.args)
            check_fusable(self.model, self.adapter_name)
        except (UnfusableRun, UnfusableAdapter) as exc:
            return str(exc)
        self.slot = FusedSlot(self.adapter_name, lambda: self._pause(TurnEnd.FUSED), self.model_settings)
        self.cohort_key = (id(self.model), self.spec.trainer_type)
        if self.spec.trainer_type == "GRPO":
            install_fused_generate(self.model)  # GRPO fuses its generation (trainers.fused_step)
        return None

    # ---- the controller's side -----------------------------------------------------------------
    def take_turn(self) -> TurnEnd:
        """Train until the next pause (blocks the calling thread); see the module docstring."""
        if not self.worker.started:
            self.intra_op_threads = torch.get_num_threads()
        self.worker.run_turn()
        return TurnEnd.FINISHED if self.worker.finished else self._pause_reason

    @property
    def num_chunks(self) -> int:
        """Chunks per epoch of the training set (the sweep's `num_chunks`)."""
        return self.data.num_chunks

    @property
    def started(self) -> bool:
        return self.worker.started

    @property
    def finished(self) -> bool:
        return self.worker.finished

    def position(self) -> int:
        """The run's place in the shared chunk order, in plan rows (a warm clone starts here)."""
        return self.gate.position()

    # ---- run state (the seam for checkpoints: a fused cohort keeps the adapter elsewhere) --------
    def adapter_state(self) -> dict[str, Any]:
        """The run's trainable weights by name: its PEFT adapter (LoRA), or the model's state dict
        (full fine-tuning). Live tensors: copy them before the run trains on."""
        if self.adapter_name is None:
            return dict(self.model.state_dict())
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model, adapter_name=self.adapter_name)

    def load_adapter_state(self, state: dict[str, Any]) -> None:
        """Set the run's trainable weights from `adapter_state()`'s form (every key must fit)."""
        if self.adapter_name is None:
            self.model.load_state_dict(state, strict=True)
            return
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state, adapter_name=self.adapter_name)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"run {self.run_id}: checkpoint weights {unexpected[:3]} do not fit its adapter")

    def continue_from(self, resume: RunResume) -> None:
        """Make this freshly built run continue from a checkpoint (see `scheduler.run_checkpoint`):
        before its first turn."""
        if self.started:
            raise RuntimeError(f"run {self.run_id} has trained already: it cannot continue from a checkpoint")
        self.load_adapter_state(resume.adapter)
        engine = resume.engine
        self.resume = resume
        self._resume_pending = True
        self.trainer.rapidfire_resume = resume
        self.gate.resume_at(engine["gate_epoch"], engine["gate_micro_batches"])
        self.global_step = resume.global_step
        self.chunks_done = resume.chunks_done
        self.current_chunk = engine["current_chunk"]
        self.latest = dict(engine["latest"])

    def abort(self) -> None:
        """End the run's thread (at once if paused; at its next step if it holds the turn)."""
        self.worker.abort()

    def release(self) -> None:
        """Drop the trainer (optimizer state, datasets) once the run is over. An adapter stays on
        its shared base model (the controller removes it where it must go); a full fine-tuning
        run's own model is let go."""
        self.trainer = None
        self.generation_eval = None
        self.slot = None
        self.cohort_key = None
        if self.adapter_name is None:
            self.model = None

    # ---- the run's own thread --------------------------------------------------------------------
    def _train(self) -> None:
        torch.set_num_threads(self.intra_op_threads)
        bind_run_thread(self.trainer)
        self._activate()
        if self.resume is not None:
            self.trainer.train(resume_from_checkpoint=str(self.resume.path))
        else:
            self.trainer.train()

    def _activate(self, fused: bool = False) -> None:
        """Make this run's process state, adapter, model settings and model mode current (it has
        just got the turn). The mode: the base is shared, and a sibling evaluating meanwhile left it in eval
        mode, which TRL reads when it logs (train or eval metrics) and the layers for dropout.
        fused: back from a hand-off inside a fused cohort step, where every member's adapter stays
        trainable: only the active adapter changes and its own flags are set (PEFT's `set_adapter` walks
        every module and parameter, ~20 ms on SmolLM2-135M with 8 adapters, several times per
        member and step)."""
        if self.process_state is not None:
            self.process_state.restore()
        if self.model is not None:
            self.model_settings.apply()  # its trainer's forward wrapper, use_cache (trainers.model_patches)
        if self.model is not None and self._model_training is not None:
            if self.model.training != self._model_training:
                self.model.train(self._model_training)
        if self.adapter_name is not None:
            if fused:
                switch_active_adapter(self.model, self.adapter_name)
                # A sibling may have frozen this adapter meanwhile (PEFT re-selects only its own
                # adapter as trainable after a disable_adapter() block, e.g. a GRPO reference pass).
                for param in member_parameters(self):
                    param.requires_grad_(True)
            else:
                self.model.set_adapter(self.adapter_name)
        self.clock.resume()

    def _pause(self, reason: TurnEnd) -> None:
        if reason is not TurnEnd.FUSED:  # a fused cohort's shared forward/backward is its time too
            self.clock.pause()
        self._pause_reason = reason
        self.process_state = ProcessState.capture()
        self._model_training = self.model.training if self.model is not None else None
        self.worker.pause()  # raises RunAborted if the controller ends the run meanwhile
        self._activate(fused=reason is TurnEnd.FUSED)

    def step_boundary(self, chunk_complete: bool) -> None:
        if self.worker.abort_requested:
            raise RunAborted(self.name)
        if self._resume_pending:  # where the checkpoint's RNG and loss accumulators were captured
            self._resume_pending = False
            self.resume.at_first_step(self.trainer)
        if chunk_complete:
            self._pause(TurnEnd.CHUNK)
        while self.hooks.should_pause():
            self._pause(TurnEnd.COMMANDS)
        self.current_chunk = self.chunks_done + 1

    def on_step(self, global_step: int, max_steps: int) -> None:
        self.global_step = global_step
        self.max_steps = max_steps
        self.hooks.on_progress(self)
        if not self.gate.pause_pending:
            fault_point("mid_chunk")

    def record_metrics(self, step: int, epoch: float | None, logs: dict[str, Any]) -> None:
        logs = own_runtime_metrics(logs, self.clock.waited())
        scalars = {
            k: float(v)
            for k, v in logs.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.latest.update(scalars)
        self.hooks.record(self.run_id, step, epoch, self.current_chunk, scalars)

    def evaluate_generations(self, step: int, epoch: float | None) -> None:
        if self.generation_eval is not None:
            self.record_metrics(step, epoch, self.generation_eval(step, epoch))
