"""The engine's shared chunk order in your own training loop: a Hugging Face Trainer, an
Accelerate loop, or plain PyTorch.

What the engine does for every run, on its own: the training rows are reshuffled each epoch
with a seeded generator and cut into ``num_chunks`` contiguous chunks (`ChunkPlan`); a run
reads its rows in that order (`ChunkedSampler`) and learns when a chunk is complete, which is
where the engine logs, evaluates and lets the user or a search decide. Runs that use the same
plan (same rows, chunks and seed) have trained on exactly the same rows after chunk k, so their
numbers compare after every chunk. Semantics: `rapidfire_core.scheduler.chunks`.

A Hugging Face Trainer (or a TRL trainer), after it is built::

    callback = use_chunk_order(trainer, num_chunks=4, seed=42, listener=on_chunk_end)
    trainer.train()   # a log (and, with an eval set, an evaluation) at every chunk end

    def on_chunk_end(end: ChunkEnd) -> bool | None:   # return True to stop training here
        print(end.chunk, end.global_step, end.metrics)

An Accelerate or plain loop::

    plan = ChunkPlan(num_rows=len(dataset), num_chunks=4, seed=42)
    sampler = ChunkedSampler(plan)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler)
    progress = ChunkProgress(sampler)
    for epoch in range(epochs):
        progress.start_epoch(epoch)
        for batch in loader:
            ...                                        # forward, backward, optimizer step
            if progress.step(len(batch["input_ids"])) is not None:
                ...                                    # a chunk is complete: evaluate, log, decide

In several processes (Accelerate's data parallelism) count the rows of every process's batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from rapidfire_core.scheduler.chunks import ChunkedSampler, ChunkPlan
from rapidfire_core.trainers.callbacks import ChunkGate

__all__ = [
    "ChunkCallback",
    "ChunkEnd",
    "ChunkListener",
    "ChunkPlan",
    "ChunkProgress",
    "ChunkedSampler",
    "use_chunk_order",
]


@dataclass(frozen=True)
class ChunkEnd:
    """A chunk was completed. chunk: chunks completed so far, counted from 1 across epochs.
    global_step: the optimizer step that completed it. metrics: that chunk's evaluation
    (``eval_loss``, ...) with an eval set, else the training log of that step (``loss``, ...)."""

    chunk: int
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)


class ChunkListener(Protocol):
    """Called once per completed chunk, after its log and evaluation; True stops training there
    (the trainer ends as after ``max_steps``: its final log and saves run)."""

    def __call__(self, end: ChunkEnd) -> bool | None: ...


class _ListenerRun:
    """The run `ChunkGate` steers, for a trainer outside the engine: positions from the
    sampler; step boundaries, metrics and generation evaluations are the trainer's own."""

    def __init__(self, sampler: ChunkedSampler, has_eval: bool) -> None:
        self.sampler = sampler
        self.chunks_done = 0
        self.has_eval = has_eval

    def step_boundary(self, chunk_complete: bool) -> None:
        pass

    def on_step(self, global_step: int, max_steps: int) -> None:
        pass

    def record_metrics(self, step: int, epoch: float | None, logs: dict[str, Any]) -> None:
        pass

    def evaluate_generations(self, step: int, epoch: float | None) -> None:
        pass


class ChunkCallback(ChunkGate):
    """A `TrainerCallback` that follows ``sampler``'s chunks: it forces a log (and with
    ``has_eval`` an evaluation, run with the RNG state put back after it so training continues
    as without it) at every chunk end, records a `ChunkEnd` in ``ends`` and calls ``listener``."""

    def __init__(
        self, sampler: ChunkedSampler, listener: ChunkListener | None = None, *, has_eval: bool = False
    ) -> None:
        super().__init__(_ListenerRun(sampler, has_eval))
        self.sampler = sampler
        self.listener = listener
        self.ends: list[ChunkEnd] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.run.has_eval:
            self._chunk_end(state, control, logs)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        super().on_evaluate(args, state, control, **kwargs)
        self._chunk_end(state, control, metrics)
        return control

    def _chunk_end(self, state, control, metrics: dict | None) -> None:
        done = self.run.chunks_done
        if done <= (self.ends[-1].chunk if self.ends else 0):
            return
        numbers = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        end = ChunkEnd(done, state.global_step, numbers)
        self.ends.append(end)
        if self.listener is not None and self.listener(end):
            control.should_training_stop = True


def use_chunk_order(
    trainer: Any, num_chunks: int, seed: int = 42, listener: ChunkListener | None = None
) -> ChunkCallback:
    """Make a built Hugging Face ``trainer`` read its training rows in the chunk order of
    ``ChunkPlan(len(trainer.train_dataset), num_chunks, seed)`` and report every chunk end
    (`ChunkCallback`, added to the trainer and returned). Build the plan after the trainer:
    TRL trainers drop rows while they prepare the dataset, and the plan counts the rows kept.
    Its ``ends`` hold every `ChunkEnd` once ``train()`` returns."""
    plan = ChunkPlan(len(trainer.train_dataset), num_chunks, seed)
    sampler = ChunkedSampler(plan)
    trainer._get_train_sampler = lambda train_dataset=None: sampler  # shadows the method (instance)
    callback = ChunkCallback(sampler, listener, has_eval=trainer.eval_dataset is not None)
    trainer.add_callback(callback)
    return callback


class ChunkProgress:
    """Chunk ends for a loop that drives its own `ChunkedSampler` (Accelerate, plain PyTorch).

    Call `start_epoch` before each epoch's loader and `step` after each optimizer step with the
    rows it consumed; `step` returns the number of chunks completed so far when that step
    completed one (else None). `end_epoch` closes the epoch's last chunk when the loader drops
    an incomplete last batch."""

    def __init__(self, sampler: ChunkedSampler) -> None:
        self.sampler = sampler
        self.epoch = 0
        self.consumed = 0
        self.chunks_done = 0

    def start_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch, self.consumed = epoch, 0

    def step(self, rows: int) -> int | None:
        self.consumed += int(rows)
        return self._advance(self.sampler.position(self.epoch, self.consumed))

    def end_epoch(self) -> int | None:
        return self._advance(self.sampler.position(self.epoch + 1, 0))

    def _advance(self, position: int) -> int | None:
        done = self.sampler.chunks_done(position)
        if done <= self.chunks_done:
            return None
        self.chunks_done = done
        return done
