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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rapidfire_core.scheduler.progress import ProgressDisplay
from rapidfire_core.trainers.execution import RunExecution


def run_chunk_rounds(
    runs: Sequence[RunExecution],
    progress: ProgressDisplay,
    on_turn_end: Callable[[RunExecution], None],
    on_finished: Callable[[RunExecution], None],
) -> None:
    pending = [run for run in runs if run.worker is not None and not run.worker.finished]
    chunk_round = 1
    while pending:
        for run in pending:
            if run.rounds_done >= chunk_round:
                continue
            progress.begin_turn(chunk_round, run)
            run.worker.run_turn()
            if run.worker.finished:
                on_finished(run)
            else:
                on_turn_end(run)
        pending = [run for run in pending if not run.worker.finished]
        chunk_round += 1
