"""Paused threads' OpenMP pools slow the thread that computes; releasing them does not.

The engine's situation in miniature: four "paused runs" (threads that ran torch ops, then wait)
and one thread that trains (400 small matmul + SiLU forward/backward steps, the op sizes of the
demo's tiny model). Three ways, interleaved round by round, seconds of the training thread:

    alone      no other thread has run torch ops
    parked     the four paused threads keep their OpenMP worker threads (the engine before
               `scheduler.openmp_pool`: libgomp then throttles every team's spin-wait)
    released   the paused threads call `release_openmp_workers()` before they wait

    pytest -m bench benchmarks/bench_openmp_pools.py --benchmark-only -s
    python benchmarks/bench_openmp_pools.py          # RF_BENCH_ROUNDS rounds (default 5)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rapidfire_core.scheduler.openmp_pool import release_openmp_workers  # noqa: E402

PAUSED_THREADS = 4
WAYS = ("alone", "parked", "released")


def _steps(n: int, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> None:
    for _ in range(n):
        y = torch.nn.functional.silu(x @ w1) @ w2
        y.sum().backward()


def one_way(way: str, steps: int = 400) -> float:
    """Seconds of ``steps`` training steps in a fresh thread while PAUSED_THREADS threads wait."""
    x = torch.randn(1024, 64, requires_grad=True)
    w1, w2 = torch.randn(64, 256), torch.randn(256, 64)
    go = threading.Event()
    ready = threading.Barrier(PAUSED_THREADS + 1 if way != "alone" else 1)

    def paused() -> None:
        _steps(20, x, w1, w2)  # a run's turn: torch ops, so a pool of OpenMP workers
        if way == "released":
            release_openmp_workers()
        ready.wait()
        go.wait()  # waits for its next turn

    waiting = [threading.Thread(target=paused) for _ in range(PAUSED_THREADS if way != "alone" else 0)]
    for thread in waiting:
        thread.start()
    ready.wait()
    seconds: list[float] = []

    def train() -> None:
        start = time.perf_counter()
        _steps(steps, x, w1, w2)
        seconds.append(time.perf_counter() - start)

    trainer = threading.Thread(target=train)
    trainer.start()
    trainer.join()
    go.set()
    for thread in waiting:
        thread.join()
    return seconds[0]


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
def test_paused_threads_pools(benchmark):
    result = benchmark.pedantic(compare, args=(5,), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print("\n" + ", ".join(f"{k}={v:.3g}" for k, v in result.items()))


if __name__ == "__main__":
    result = compare(int(os.environ.get("RF_BENCH_ROUNDS", 5)))
    print(", ".join(f"{k}={v:.3g}" for k, v in result.items()))
