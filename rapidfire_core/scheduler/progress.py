"""The one progress display of a sweep: a line per (chunk, run) turn, live progress inside it.

    [epoch 1 chunk 2/4] run 3 (r=8, learning_rate=0.001) step 12/32 loss=1.2345  2.10 steps/s  ETA 9s

- In a terminal the running run's line is redrawn in place (at most 10 times a second).
- In a Jupyter notebook one output line is updated in place (at most twice a second).
- Elsewhere (CI logs, redirected output) a progress line is printed every `PLAIN_EVERY_S`
  seconds during a long turn.
Every finished turn leaves one line, with `-> STATUS` when the run left the ONGOING state;
`note` prints one-off lines (command outcomes) without breaking the live line.
steps/s is measured over the current turn; the ETA is the run's remaining steps at that rate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rapidfire_core.scheduler.run import Run

_SHOWN = ("loss", "eval_loss", "reward", "rewards/accuracies")
TERMINAL_EVERY_S = 0.1
NOTEBOOK_EVERY_S = 0.5
PLAIN_EVERY_S = 30.0


def _in_notebook(stream: TextIO) -> bool:
    if stream is not sys.stdout or "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressDisplay:
    def __init__(
        self,
        shown_knobs: list[str],
        stream: TextIO | None = None,
        enabled: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """shown_knobs: the knob names printed for each run (those that differ between runs).
        log: also receives every finished-turn line and note, enabled or not (the experiment log)."""
        self.shown_knobs = shown_knobs
        self.log = log
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.mode = "off"
        if enabled:
            is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
            self.mode = "terminal" if is_tty else "notebook" if _in_notebook(self.stream) else "plain"
        self.label = ""
        self._chunk_label = ""
        self._members: list[int] = []  # the runs of the current turn (a cohort's: lines name their run)
        self._fused = False
        self._handle: Any = None  # the notebook's display handle of the live line
        self._turn_start = (0.0, 0)  # (time, global_step) when the current turn began
        self._last_draw = 0.0

    def begin_turn(self, run: Run, fused: list[int] | None = None) -> None:
        """A turn of ``run`` begins; ``fused``: the ids of the cohort training with it in one step."""
        num_chunks = run.num_chunks
        epoch, chunk = divmod(run.chunks_done, num_chunks)
        self._fused = bool(fused)
        self._members = list(fused or [run.run_id])
        self._chunk_label = f"[epoch {epoch + 1} chunk {chunk + 1}/{num_chunks}]"
        self._set_label()
        self._turn_start = (time.monotonic(), run.global_step)
        self._last_draw = time.monotonic()

    def _set_label(self) -> None:
        # A cohort's members can change within its turn (a clone joins at the next step): the
        # label names the runs that trained in it so far, so a line never names a run outside it.
        members = self._members
        who = f"runs {','.join(map(str, members))} fused:" if len(members) > 1 else f"run {members[0]}"
        self.label = f"{self._chunk_label} {who}"

    def _rate(self, run: Run) -> str:
        started, first_step = self._turn_start
        steps, elapsed = run.global_step - first_step, time.monotonic() - started
        if steps <= 0 or elapsed <= 0:
            return ""
        rate = steps / elapsed
        text = f" {rate:.2f} steps/s"
        if run.max_steps:
            text += f"  ETA {_duration(max(run.max_steps - run.global_step, 0) / rate)}"
        return text

    def _line(self, run: Run, live: bool = False) -> str:
        metrics = " ".join(f"{k}={run.latest[k]:.4f}" for k in _SHOWN if k in run.latest)
        steps = f"step {run.global_step}/{run.max_steps}" if run.max_steps else f"step {run.global_step}"
        knobs = ", ".join(f"{k.split('.')[-1]}={run.knobs.get(k)}" for k in self.shown_knobs)
        if self._fused and run.run_id not in self._members:
            self._members.append(run.run_id)
            self._set_label()
        member = f"run {run.run_id}" if len(self._members) > 1 else ""
        parts = (self.label, member, f"({knobs})" if knobs else "", steps, metrics)
        return " ".join(part for part in parts if part) + (self._rate(run) if live else "")

    def step(self, run: Run) -> None:
        now = time.monotonic()
        every = {"terminal": TERMINAL_EVERY_S, "notebook": NOTEBOOK_EVERY_S, "plain": PLAIN_EVERY_S}
        if self.mode == "off" or now - self._last_draw < every[self.mode]:
            return
        self._last_draw = now
        line = self._line(run, live=True)
        if self.mode == "terminal":
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif self.mode == "notebook":
            self._notebook_update(line)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _notebook_update(self, line: str) -> None:
        from IPython.display import display

        if self._handle is None:
            self._handle = display({"text/plain": line}, raw=True, display_id=True)
        else:
            self._handle.update({"text/plain": line}, raw=True)

    def end_turn(self, run: Run, status: str) -> None:
        suffix = "" if status == "ONGOING" else f" -> {status}"
        self._print(self._line(run) + suffix)

    def note(self, text: str) -> None:
        """A one-off line (a command's outcome, a failure)."""
        self._print(text)

    def _print(self, text: str) -> None:
        if self.log is not None:
            self.log(text)
        if self.mode == "off":
            return
        if self._handle is not None:  # the notebook's live line ends with the turn
            self._handle.update({"text/plain": ""}, raw=True)
            self._handle = None
        prefix = "\r\033[K" if self.mode == "terminal" else ""
        self.stream.write(prefix + text + "\n")
        self.stream.flush()
