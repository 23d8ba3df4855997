"""Trainer callbacks that connect a stock TRL trainer to the run controller.

`ChunkGate` tracks the run's position in the shared chunk order, in plan rows (see
`rapidfire_core.scheduler.chunks`). When an optimizer step completes a chunk it forces a log
and (with an eval set) an evaluation, so all runs have comparable numbers after every chunk;
`engine_log` / `engine_eval` say when that log or evaluation is one stock TRL would not have
made (the user's own callbacks are not shown those, `trainers.user_callbacks`).
At the start of every optimizer step it hands control to the run (`GatedRun.step_boundary`):
that is where the run gives its turn back at a chunk end, where commands (stop, delete, clone,
...) take effect, and where an abort unwinds `train()`. `MetricsForwarder` hands every
`Trainer.log` call (loss, learning_rate, grad_norm, eval_loss, rewards/* for DPO, reward for
GRPO, ...) to the run's metric sink and fails the run on a non-finite loss or gradient norm.

The callbacks see the run only through the `GatedRun` protocol, so this package does not
depend on the scheduler.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from transformers import TrainerCallback

from rapidfire_core.trainers.process_state import ProcessState

_MUST_BE_FINITE = ("loss", "grad_norm", "eval_loss")


class NonFiniteMetric(RuntimeError):
    """A run produced NaN/inf in a loss or gradient norm."""


class GatedRun(Protocol):
    """What the callbacks need of a run in flight."""

    sampler: Any  # a chunk sampler: position(epoch, consumed), chunks_done(position)
    chunks_done: int
    has_eval: bool

    def step_boundary(self, chunk_complete: bool) -> None:
        """Called at the start of every optimizer step; may pause the run or raise to end it."""

    def on_step(self, global_step: int, max_steps: int) -> None: ...

    def record_metrics(self, step: int, epoch: float | None, logs: dict[str, Any]) -> None: ...

    def evaluate_generations(self, step: int, epoch: float | None) -> None: ...


class ChunkGate(TrainerCallback):
    def __init__(self, run: GatedRun) -> None:
        self.run = run
        self.items_per_micro_batch = 0
        self.batches_per_epoch = 0
        self.pause_pending = False
        self.state_before_extra_eval: ProcessState | None = None
        self.epoch = -1
        self.micro_batches = 0
        self.engine_log = False  # this step's training log is one the engine forced
        self.engine_eval = False  # this step's evaluation is one the engine forced
        self._resume_at: tuple[int, int] | None = None

    def resume_at(self, epoch: int, micro_batches: int) -> None:
        """A run continued from a checkpoint: transformers resumes in trainer epoch `epoch` with
        `micro_batches` of it already consumed (it skips them), so count from there."""
        self._resume_at = (epoch, micro_batches)

    def position(self) -> int:
        """The run's position in plan rows (at an optimizer-step boundary; see the chunks module)."""
        if self.epoch < 0:
            return self.run.sampler.position(0, 0)
        return self.run.sampler.position(self.epoch, self.micro_batches * self.items_per_micro_batch)

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.epoch, self.micro_batches = -1, 0  # train() may restart (auto_find_batch_size)
        if self._resume_at is not None:
            self.epoch = self._resume_at[0] - 1  # the next on_epoch_begin is the resumed epoch
        loader = train_dataloader
        # accelerate's DataLoaderShard keeps DataLoader.batch_size; with a batch sampler it is None.
        batch = getattr(loader, "total_batch_size", None) or getattr(loader, "batch_size", None)
        self.items_per_micro_batch = int(batch or args.per_device_train_batch_size)
        self.batches_per_epoch = len(loader) if loader is not None else 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch += 1
        self.micro_batches = 0
        if self._resume_at is not None:
            self.micro_batches, self._resume_at = self._resume_at[1], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.engine_log = self.engine_eval = False
        chunk_complete, self.pause_pending = self.pause_pending, False
        self.run.step_boundary(chunk_complete)

    def on_substep_end(self, args, state, control, **kwargs):
        self.micro_batches += 1

    def on_step_end(self, args, state, control, **kwargs):
        self.micro_batches += 1
        self._close_chunks(self.run.sampler.chunks_done(self.position()))
        finishing = state.max_steps > 0 and state.global_step >= state.max_steps
        if self.pause_pending or finishing:
            self._force_log_and_eval(control)
        self.run.on_step(state.global_step, state.max_steps)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        # With dataloader_drop_last the epoch's final rows are never consumed, so its last chunk
        # never reaches its end count: the end of the epoch closes every chunk of it. (Only when
        # every batch was consumed: at max_steps the trainer ends the epoch early.)
        # The last step's forced log/evaluation is over; an epoch-end one is TRL's own unless forced here.
        self.engine_log = self.engine_eval = False
        if self.micro_batches >= self.batches_per_epoch:
            before = self.run.chunks_done
            self._close_chunks(self.run.sampler.chunks_done(self.run.sampler.position(self.epoch + 1, 0)))
            if self.run.chunks_done > before:
                self._force_log_and_eval(control)
        return control

    def _close_chunks(self, chunks_done: int) -> None:
        if chunks_done > self.run.chunks_done:
            self.run.chunks_done = chunks_done
            self.pause_pending = True

    def _force_log_and_eval(self, control) -> None:
        self.engine_log = self.engine_log or not control.should_log
        control.should_log = True
        if self.run.has_eval and not control.should_evaluate:
            self.engine_eval = True
            # An evaluation stock TRL would not run here. It draws from the global RNG (each eval
            # DataLoader iterator takes a seed), so the run's state is put back after it
            # (`on_evaluate`): training continues exactly as it would have without it.
            control.should_evaluate = True
            self.state_before_extra_eval = ProcessState.capture()

    def on_evaluate(self, args, state, control, **kwargs):
        if self.state_before_extra_eval is not None:
            self.state_before_extra_eval.restore()
            self.state_before_extra_eval = None


class MetricsForwarder(TrainerCallback):
    def __init__(self, run: GatedRun) -> None:
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        for key in _MUST_BE_FINITE:
            value = logs.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise NonFiniteMetric(f"{key} became {value} at step {state.global_step}")
        self.run.record_metrics(state.global_step, state.epoch, logs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.run.evaluate_generations(state.global_step, state.epoch)
