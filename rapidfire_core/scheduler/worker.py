"""Cooperative hand-off between the scheduler and one run's training thread.

Each run trains with its own, unmodified TRL trainer whose `train()` runs in a worker thread.
Exactly one thread executes at any time: the scheduler hands a worker the turn
(`run_turn`) and blocks until the worker gives it back (`pause`, called from the chunk-gate
callback at a chunk boundary) or finishes. So a run's learning-rate schedule, optimizer
state, step counter and logging are TRL's own and span the whole run, as if it trained alone.

If the scheduler aborts a paused worker (`abort`), `pause` raises `RunAborted` inside the
trainer, which unwinds `train()` and ends the thread.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable

from rapidfire_core.scheduler.openmp_pool import release_openmp_workers


class RunAborted(Exception):
    """Raised inside a paused run's thread when the scheduler ends it early."""


class RunWorker:
    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.name = name
        self._target = target
        self._turn = threading.Semaphore(0)  # scheduler -> worker: "go"
        self._back = threading.Semaphore(0)  # worker -> scheduler: "paused or finished"
        self._thread = threading.Thread(target=self._main, name=f"rapidfire-{name}", daemon=True)
        self._aborting = False
        self.has_turn = False  # True while the worker runs (set and read by the scheduler thread)
        self.finished = False
        self.error: BaseException | None = None
        self.error_traceback: str | None = None

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def _main(self) -> None:
        self._turn.acquire()
        try:
            if not self._aborting:
                self._target()
        except RunAborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - a run's failure must not take the scheduler down
            self.error_traceback = traceback.format_exc()
            # The traceback's frames hold the trainer, the batch and the autograd graph: keep the
            # text, drop the frames, so a failed (e.g. out-of-memory) run frees its memory.
            exc.__traceback__ = None
            self.error = exc
        finally:
            self.finished = True
            self._back.release()

    # ---- scheduler side ------------------------------------------------------------------------
    def run_turn(self) -> None:
        """Let the worker run until it pauses or finishes (blocks the calling thread)."""
        if self.finished:
            return
        if not self.started:
            self._thread.start()
        self.has_turn = True
        release_openmp_workers()  # the worker computes now: this thread's team would slow it
        self._turn.release()
        self._back.acquire()
        self.has_turn = False

    def abort(self) -> None:
        """End the worker; returns when its thread is done.

        A paused or never-started worker ends at once. A running one (the scheduler was
        interrupted while waiting for it) ends at its next step: the chunk gate checks
        `abort_requested` at every step start.
        """
        if self.finished:
            return
        self._aborting = True
        self.run_turn()
        self._thread.join()

    @property
    def abort_requested(self) -> bool:
        return self._aborting

    # ---- worker side ---------------------------------------------------------------------------
    def pause(self) -> None:
        """Give the turn back to the scheduler and wait for the next one."""
        release_openmp_workers()  # whoever trains next must not share the CPUs with our team
        self._back.release()
        self._turn.acquire()
        if self._aborting:
            raise RunAborted(self.name)
