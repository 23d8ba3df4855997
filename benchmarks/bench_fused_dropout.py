"""What exact per-run dropout costs a fused step: one forward+backward of N members' batches with
LoRA dropout 0.1, each member's masks drawn from its own RNG stream in its own shapes
(`lora.run_streams`, what the engine does) vs one mask drawn for all rows (the engine before, not
equal to stock TRL), and vs N separate passes (what time-sliced runs compute).

Same work as `bench_fused_compute` (N adapters of `bench_fused`, 4 x 230 tokens per member,
gradient checkpointing), on the demo's tiny model or RF_BENCH_MODEL; interleaved rounds, min each.

    python benchmarks/bench_fused_dropout.py       # RF_BENCH_N (default 4), RF_BENCH_ROUNDS (5)
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

from benchmarks.bench_fused_compute import LENGTH, ROWS, _model, fused, separate  # noqa: E402
from rapidfire_core.lora.run_streams import RunStream  # noqa: E402

DROPOUT = 0.1


def _streams(n: int) -> list[RunStream]:
    return [RunStream(ROWS, LENGTH, False, torch.get_rng_state(), torch.device("cpu")) for _ in range(n)]


def compare(n: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = _model(n, lora_dropout=DROPOUT)
    batches = [torch.randint(4, model.config.vocab_size, (ROWS, LENGTH)) for _ in range(n)]
    ways = {
        "separate": lambda: separate(model, batches),
        "fused_one_mask": lambda: fused(model, batches),
        "fused_per_run": lambda: fused(model, batches, _streams(n)),
    }
    best = dict.fromkeys(ways, float("inf"))

    def measure() -> None:
        for _ in range(rounds):
            for name, way in ways.items():
                start = time.perf_counter()
                way()
                best[name] = min(best[name], time.perf_counter() - start)

    thread = threading.Thread(target=measure)  # off the main thread, as the engine computes
    thread.start()
    thread.join()
    out = {f"{name}_s": s for name, s in best.items()}
    out["per_run_vs_one_mask"] = best["fused_per_run"] / best["fused_one_mask"]
    out["fused_per_run_vs_separate"] = best["separate"] / best["fused_per_run"]
    return out


@pytest.mark.bench
@pytest.mark.parametrize("n", [4, 8])
def test_per_run_dropout_cost(benchmark, n):
    result = benchmark.pedantic(compare, args=(n, 5), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\nN={n}: " + ", ".join(f"{k}={v:.3g}" for k, v in result.items()))


if __name__ == "__main__":
    n = int(os.environ.get("RF_BENCH_N", 4))
    result = compare(n, int(os.environ.get("RF_BENCH_ROUNDS", 5)))
    print(f"N={n}: " + ", ".join(f"{k}={v:.3g}" for k, v in result.items()))
