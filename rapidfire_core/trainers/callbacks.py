"""Trainer callbacks that connect a stock TRL trainer to the chunk scheduler.

`ChunkGate` watches how many items of the current epoch the trainer has consumed. When an
optimizer step completes a chunk it forces a log and (with an eval set) an evaluation, so all
runs have comparable numbers after every chunk, then pauses the run at the start of its next
step. `MetricsForwarder` hands every `Trainer.log` call (loss, learning_rate, grad_norm,
eval_loss, rewards/* for DPO, reward for GRPO, ...) to the run's metric sink and fails the
run on a non-finite loss or gradient norm.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from rapidfire_core.scheduler.worker import RunAborted
from rapidfire_core.trainers.process_state import ProcessState

if TYPE_CHECKING:
    from rapidfire_core.trainers.execution import RunExecution

_MUST_BE_FINITE = ("loss", "grad_norm", "eval_loss")


class NonFiniteMetric(RuntimeError):
    """A run produced NaN/inf in a loss or gradient norm."""


class ChunkGate(TrainerCallback):
    def __init__(self, run: RunExecution) -> None:
        self.run = run
        self.items_per_micro_batch = 0
        self.batches_per_epoch = 0
        self.pause_pending = False
        self.state_before_extra_eval: ProcessState | None = None
        self._reset_position()

    def _reset_position(self) -> None:
        self.epoch = -1
        self.micro_batches = 0
        self.chunks_seen_in_epoch = 0

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self._reset_position()  # train() may restart (auto_find_batch_size)
        loader = train_dataloader
        # accelerate's DataLoaderShard keeps DataLoader.batch_size; with a batch sampler it is None.
        batch = getattr(loader, "total_batch_size", None) or getattr(loader, "batch_size", None)
        self.items_per_micro_batch = int(batch or args.per_device_train_batch_size)
        self.batches_per_epoch = len(loader) if loader is not None else 0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch += 1
        self.micro_batches = 0
        self.chunks_seen_in_epoch = 0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.run.worker.abort_requested:
            raise RunAborted(self.run.name)
        if self.pause_pending:
            self.pause_pending = False
            self.run.yield_turn()
        self.run.chunk_round = self.run.rounds_done + 1  # the round this step trains on

    def on_substep_end(self, args, state, control, **kwargs):
        self.micro_batches += 1

    def on_step_end(self, args, state, control, **kwargs):
        self.micro_batches += 1
        ends = self.run.sampler.item_chunk_ends(self.epoch)
        consumed = self.micro_batches * self.items_per_micro_batch
        self._close_chunks(sum(1 for end in ends if end <= consumed), len(ends))
        finishing = state.max_steps > 0 and state.global_step >= state.max_steps
        if self.pause_pending or finishing:
            self._force_log_and_eval(control)
        self.run.on_step(state.global_step, state.max_steps)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        # With dataloader_drop_last the epoch's final rows are never consumed, so its last chunk
        # never reaches its end count: the end of the epoch closes every chunk of it. (Only when
        # every batch was consumed: at max_steps the trainer ends the epoch early.)
        num_chunks = len(self.run.sampler.item_chunk_ends(self.epoch))
        if self.chunks_seen_in_epoch < num_chunks and self.micro_batches >= self.batches_per_epoch:
            self._close_chunks(num_chunks, num_chunks)
            self._force_log_and_eval(control)
        return control

    def _close_chunks(self, crossed: int, num_chunks: int) -> None:
        if crossed > self.chunks_seen_in_epoch:
            self.chunks_seen_in_epoch = crossed
            self.run.rounds_done = self.epoch * num_chunks + crossed
            self.pause_pending = True

    def _force_log_and_eval(self, control) -> None:
        control.should_log = True
        if self.run.has_eval and not control.should_evaluate:
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
    def __init__(self, run: RunExecution) -> None:
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
