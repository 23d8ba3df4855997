"""A thread's OpenMP workers exit when it releases them, and a run's thread releases them when it
hands the turn back (so a paused run's team never throttles the one that trains)."""

import os
import threading

import pytest
import torch

from rapidfire_core.scheduler.openmp_pool import openmp_runtime_loaded, release_openmp_workers
from rapidfire_core.scheduler.worker import RunWorker

pytestmark = [
    pytest.mark.skipif(
        not openmp_runtime_loaded(), reason="torch's OpenMP is not a libgomp with the pause API"
    ),
    pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: torch starts no OpenMP workers"),
]


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _parallel_work() -> None:
    torch.set_num_threads(2)
    torch.ones(1 << 22).add_(1)  # far above torch's grain size: an OpenMP parallel region


def _counts_in_thread(body) -> list[int]:
    counts: list[int] = []
    thread = threading.Thread(target=lambda: body(counts))
    thread.start()
    thread.join()
    return counts


def _stable(measure, attempts: int = 3):
    """The same counts twice in a row (other threads of the test process may start or end)."""
    last = measure()
    for _ in range(attempts):
        again = measure()
        if again == last:
            return again
        last = again
    return last


def test_released_workers_exit_and_the_next_parallel_region_starts_new_ones():
    def body(counts):
        counts.append(_threads())
        _parallel_work()
        counts.append(_threads())
        release_openmp_workers()
        counts.append(_threads())
        _parallel_work()  # still computes, with a new team
        counts.append(_threads())
        release_openmp_workers()

    before, with_team, released, again = _stable(lambda: _counts_in_thread(body))
    assert with_team > before
    assert released == before
    assert again == with_team


def test_a_paused_run_worker_holds_no_openmp_workers():
    seen: list[int] = []

    def train():
        _parallel_work()
        seen.append(_threads())  # the worker and its team
        worker.pause()

    worker = RunWorker("omp", train)
    worker.run_turn()  # returns once the worker has paused
    paused = _threads()
    try:
        assert paused < seen[0]  # its team is gone while it waits
    finally:
        worker.abort()
