"""One run in flight: its TRL trainer, worker thread, sampler, RNG and adapter.

The scheduler only sees `RunExecution`: it gives the run turns (`worker.run_turn()`), reads
`rounds_done` (how many chunk rounds, across epochs, the run has fully trained on) and, when
the worker finishes, the experiment records COMPLETED or FAILED. Everything TRL-specific is built
by `rapidfire_core.trainers.factory`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rapidfire_core.scheduler.worker import RunWorker
from rapidfire_core.trainers.process_state import ProcessState


@dataclass
class RunExecution:
    run_id: int
    name: str
    knobs: dict[str, Any]
    mlflow_run_id: str
    record: Callable[[int, int, float | None, int, dict[str, float]], None]
    """record(run_id, step, epoch, chunk_round, metrics): the experiment's metric sink."""
    on_progress: Callable[[RunExecution], None] = lambda run: None

    trainer: Any = None
    sampler: Any = None
    model: Any = None
    adapter_name: str | None = None
    process_state: ProcessState | None = None
    has_eval: bool = False
    generation_eval: Callable[[int, float | None], dict[str, float]] | None = None

    worker: RunWorker | None = None
    rounds_done: int = 0
    chunk_round: int = 1  # the chunk round being trained (labels logged metrics)
    global_step: int = 0
    max_steps: int = 0
    latest: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    # ---- turn taking (called in the run's own thread) -----------------------------------------
    def start_worker(self) -> None:
        self.worker = RunWorker(self.name, self._train)

    def _train(self) -> None:
        self._activate()
        self.trainer.train()

    def _activate(self) -> None:
        """Make this run's process state and adapter current (it has just got the turn)."""
        if self.process_state is not None:
            self.process_state.restore()
        if self.adapter_name is not None:
            self.model.set_adapter(self.adapter_name)

    def yield_turn(self) -> None:
        self.process_state = ProcessState.capture()
        self.worker.pause()
        self._activate()

    # ---- callbacks ------------------------------------------------------------------------------
    def on_step(self, global_step: int, max_steps: int) -> None:
        self.global_step = global_step
        self.max_steps = max_steps
        self.on_progress(self)

    def record_metrics(self, step: int, epoch: float | None, logs: dict[str, Any]) -> None:
        scalars = {
            k: float(v)
            for k, v in logs.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.latest.update(scalars)
        self.record(self.run_id, step, epoch, self.chunk_round, scalars)

    def evaluate_generations(self, step: int, epoch: float | None) -> None:
        if self.generation_eval is not None:
            self.record_metrics(step, epoch, self.generation_eval(step, epoch))

    def release(self) -> None:
        """Drop the trainer (optimizer state, datasets) once the run is over. An adapter stays on
        its shared base model; a full fine-tuning run's own model is let go."""
        self.trainer = None
        self.sampler = None
        self.generation_eval = None
        if self.adapter_name is None:
            self.model = None
