"""Terminal progress: chunk, run, step and latest losses.

In a terminal the current run's line updates in place every step; each finished turn leaves
one line per (chunk, run). Outside a terminal (CI logs, notebooks' captured output) only the
per-turn lines are printed.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rapidfire_core.trainers.execution import RunExecution

_SHOWN = ("loss", "eval_loss", "reward", "rewards/accuracies")


class ProgressDisplay:
    def __init__(
        self, num_chunks: int, shown_knobs: list[str], stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        """shown_knobs: the knob names printed for each run (those that differ between runs)."""
        self.num_chunks = num_chunks
        self.shown_knobs = shown_knobs
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label = ""

    def begin_turn(self, chunk_round: int, run: RunExecution) -> None:
        epoch, chunk = divmod(chunk_round - 1, self.num_chunks)
        self.label = f"[epoch {epoch + 1} chunk {chunk + 1}/{self.num_chunks}] run {run.run_id}"

    def _line(self, run: RunExecution) -> str:
        metrics = " ".join(f"{k}={run.latest[k]:.4f}" for k in _SHOWN if k in run.latest)
        steps = f"step {run.global_step}/{run.max_steps}" if run.max_steps else f"step {run.global_step}"
        knobs = ", ".join(f"{k.split('.')[-1]}={run.knobs.get(k)}" for k in self.shown_knobs)
        return " ".join(part for part in (self.label, f"({knobs})" if knobs else "", steps, metrics) if part)

    def step(self, run: RunExecution) -> None:
        if self.live:
            self.stream.write("\r\033[K" + self._line(run))
            self.stream.flush()

    def end_turn(self, run: RunExecution, status: str) -> None:
        if not self.enabled:
            return
        prefix = "\r\033[K" if self.live else ""
        suffix = "" if status == "ONGOING" else f" -> {status}"
        self.stream.write(prefix + self._line(run) + suffix + "\n")
        self.stream.flush()
