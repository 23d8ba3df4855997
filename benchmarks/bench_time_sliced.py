"""Time-sliced engine vs the user's status quo (the same configs trained one after another with
stock TRL, each loading its model and building its trainer), and the cost of chunking.

    pytest -m bench benchmarks/bench_time_sliced.py --benchmark-only

The work and both ways are `bench_fused`'s (4 LoRA configs x STEPS steps on the demo's tiny chat
model, fp32, no eval set), here with fusion off: the engine with 1 chunk vs 8 chunks isolates
the chunk-boundary overhead (hand-offs, forced logs). RESULTS.md's earlier table used 2 LoRA
shapes x 2 learning rates and ran stock TRL in the main thread.
"""

from __future__ import annotations

import pytest

from benchmarks.bench_fused import engine, in_worker_thread, sequential_stock
from benchmarks.settings import bench_rounds
from rapidfire_core.demo.tiny_model import demo_assets

pytestmark = pytest.mark.bench

NUM_CONFIGS = 4


@pytest.fixture(scope="module")
def model_dir():
    return str(demo_assets().model_path)


@pytest.mark.benchmark(group="time-sliced-4-configs")
def test_sequential_stock_trl(benchmark, model_dir, tmp_path):
    benchmark.pedantic(
        lambda: in_worker_thread(lambda: sequential_stock(model_dir, tmp_path, NUM_CONFIGS)),
        rounds=bench_rounds(3),
        iterations=1,
        warmup_rounds=0,
    )


@pytest.mark.benchmark(group="time-sliced-4-configs")
@pytest.mark.parametrize("num_chunks", [1, 4, 8])
def test_engine(benchmark, model_dir, tmp_path, num_chunks):
    benchmark.pedantic(
        lambda: in_worker_thread(lambda: engine(model_dir, tmp_path, NUM_CONFIGS, "sliced", num_chunks)),
        rounds=bench_rounds(3),
        iterations=1,
        warmup_rounds=0,
    )
