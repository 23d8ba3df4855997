"""The chunk-round loop (time-sliced execution).

    round = 1
    while some run is unfinished:
        for run in runs (in creation order):
            if run finished or run.rounds_done >= round: continue
            give run the turn          # it trains until it completes chunk `round`, or ends
            if its worker finished: COMPLETED, or FAILED with the error
        round += 1

`rounds_done` counts chunk rounds across epochs (epoch * num_chunks + chunk). A run whose
effective batch is larger than a chunk may complete several rounds in one turn; it then
sits out until the others catch up, so all runs stay aligned on the same data.

With a `residency` (`run_fit(..., gpu_state_budget=...)`, see `rapidfire_core.memory.residency`)
each turn is bracketed by pool calls; the scheduler passes the turns that follow, in order, so
the pool prefetches the next run during this turn and evicts the run needed furthest ahead:

            residency.before_turn(run, upcoming)   # resident now; the next run is prefetched
            give run the turn
            residency.after_turn(run, upcoming)    # or forget(run) once it has finished
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rapidfire_core.scheduler.progress import ProgressDisplay
from rapidfire_core.trainers.execution import RunExecution

if TYPE_CHECKING:
    from rapidfire_core.memory.residency import RunResidency


def run_chunk_rounds(
    runs: Sequence[RunExecution],
    progress: ProgressDisplay,
    on_turn_end: Callable[[RunExecution], None],
    on_finished: Callable[[RunExecution], None],
    on_error: Callable[[RunExecution, Exception], None],
    residency: RunResidency | None = None,
) -> None:
    """on_error(run, exc): an exception in the scheduler-side work of one run's turn (pool calls,
    on_turn_end, on_finished) ends that run only; its worker may still be paused."""
    pending = [run for run in runs if run.worker is not None and not run.worker.finished]
    if residency is not None:
        residency.start(pending)
    chunk_round = 1
    try:
        while pending:
            # A run's rounds_done changes only in its own turn, so the round's turns are known now.
            due = [run for run in pending if run.rounds_done < chunk_round]
            for index, run in enumerate(due):
                # The turns after this one: the rest of this round, then (about) the next round.
                upcoming = due[index + 1 :] + pending
                try:
                    _take_turn(run, chunk_round, upcoming, progress, on_turn_end, on_finished, residency)
                except Exception as exc:  # noqa: BLE001 - one run's trouble must not end the others
                    on_error(run, exc)
                    if residency is not None:
                        _release_failed(residency, run)
            pending = [run for run in pending if not run.worker.finished]
            chunk_round += 1
    finally:
        if residency is not None:
            residency.close()


def _release_failed(residency: RunResidency, run: RunExecution) -> None:
    """Let a failed run's pooled state go; if even that fails (e.g. out of device memory while
    restoring it), its state stays in the host pool until the end and the other runs go on."""
    try:
        residency.forget(run)
    except Exception as exc:  # noqa: BLE001 - the run has already failed; the others must not
        warnings.warn(
            f"run {run.run_id}: its state could not be released from the pool ({exc}); "
            "it stays in the host arena until run_fit ends",
            RuntimeWarning,
            stacklevel=2,
        )


def _take_turn(run, chunk_round, upcoming, progress, on_turn_end, on_finished, residency) -> None:
    if residency is not None:
        residency.before_turn(run, upcoming)
    progress.begin_turn(chunk_round, run)
    run.worker.run_turn()
    if run.worker.finished:
        on_finished(run)
        if residency is not None:
            residency.forget(run)
    else:
        on_turn_end(run)
        if residency is not None:
            residency.after_turn(run, upcoming)
