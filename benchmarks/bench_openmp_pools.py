"""Paused threads' OpenMP pools slow the thread that computes; releasing them does not.

The engine's situation in miniature: four "paused runs" (threads that ran torch ops, then wait)
and one thread that trains (400 small matmul + SiLU forward/backward steps, the op sizes of the
demo's tiny model). Three ways, interleaved round by round, seconds of the training thread:

    alone      no other thread has run torch ops
    parked     the four paused threads keep their OpenMP worker threads (the engine before
               `scheduler.openmp_pool`: libgomp then throttles every team's spin-wait)
    released   the paused threads call `release_openmp_workers()` before they wait

    pytest -m bench benchmarks/bench_openmp_pools.py --benchmark-only   # one benchmark per way
    python benchmarks/bench_openmp_pools.py          # RF_BENCH_ROUNDS rounds (default 5)

Under pytest each way is one benchmark (group ``openmp-pools``) timing the training thread;
the script interleaves the ways and prints each one's ratio to `alone`.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.settings import bench_rounds  # noqa: E402
from rapidfire_core.scheduler.openmp_pool import release_openmp_workers  # noqa: E402

PAUSED_THREADS = 4
WAYS = ("alone", "parked", "released")


def _steps(n: int, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> None:
    for _ in range(n):
        y = torch.nn.functional.silu(x @ w1) @ w2
        y.sum().backward()


class PausedRuns:
    """PAUSED_THREADS threads that ran torch ops and now wait for their next turn (none if alone)."""

    def __init__(self, way: str) -> None:
        self.x = torch.randn(1024, 64, requires_grad=True)
        self.w1, self.w2 = torch.randn(64, 256), torch.randn(256, 64)
        self.go = threading.Event()
        count = PAUSED_THREADS if way != "alone" else 0
        ready = threading.Barrier(count + 1)

        def paused() -> None:
            _steps(20, self.x, self.w1, self.w2)  # a run's turn: torch ops, so a pool of OpenMP workers
            if way == "released":
                release_openmp_workers()
            ready.wait()
            self.go.wait()  # waits for its next turn

        self.waiting = [threading.Thread(target=paused) for _ in range(count)]
        for thread in self.waiting:
            thread.start()
        ready.wait()

    def train(self, steps: int = 400) -> float:
        """Seconds of ``steps`` training steps in a fresh thread while the paused threads wait."""
        seconds: list[float] = []

        def train() -> None:
            start = time.perf_counter()
            _steps(steps, self.x, self.w1, self.w2)
            seconds.append(time.perf_counter() - start)

        trainer = threading.Thread(target=train)
        trainer.start()
        trainer.join()
        return seconds[0]

    def end(self) -> None:
        self.go.set()
        for thread in self.waiting:
            thread.join()


def one_way(way: str, steps: int = 400) -> float:
    """Seconds of ``steps`` training steps in a fresh thread while PAUSED_THREADS threads wait."""
    paused = PausedRuns(way)
    try:
        return paused.train(steps)
    finally:
        paused.end()


def compare(rounds: int) -> dict[str, float]:
    """Interleaved rounds; min seconds per way and each way's time over `alone`."""
    best = {way: float("inf") for way in WAYS}
    for _ in range(rounds):
        for way in WAYS:
            best[way] = min(best[way], one_way(way))
    out = {f"{way}_s": s for way, s in best.items()}
    out |= {f"{way}_vs_alone": best[way] / best["alone"] for way in WAYS[1:]}
    return out


@pytest.mark.bench
@pytest.mark.benchmark(group="openmp-pools")
@pytest.mark.parametrize("way", WAYS)
def test_training_thread(benchmark, way):
    """Seconds of the training thread (its start and join included) while the paused threads of
    ``way`` wait; starting and ending them is each round's untimed setup and teardown."""
    current: list[PausedRuns] = []
    benchmark.pedantic(
        lambda: current[-1].train(),
        setup=lambda: current.append(PausedRuns(way)),
        teardown=lambda: current[-1].end(),
        rounds=bench_rounds(5),
        iterations=1,
    )


if __name__ == "__main__":
    result = compare(bench_rounds(5))
    print(", ".join(f"{k}={v:.3g}" for k, v in result.items()))
