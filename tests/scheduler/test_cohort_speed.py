"""The cheap speed-ratio check CI runs (the full figures: `make bench`, benchmarks/bench_fused.py).

8 LoRA configs on the demo's tiny model, 8 steps each at batch 2, interleaved rounds, the
minimum of each way. Measured on the 2-core dev machine (benchmarks/RESULTS.md): fused and
time-sliced both ~1.37x training the configs one after another with stock TRL, fused ~1.0x
sliced (on CPU a fused step does the same arithmetic as the runs' own steps; it saves per-op
overhead). Before the engine's threads released their OpenMP workers at every hand-off
(`scheduler.openmp_pool`), sliced was ~0.84x sequential. The floors are below the figures so that
they catch a regression (a fused path slower than sliced, an engine slower than the status quo)
without flaking on a busy 2-core machine.
"""

from __future__ import annotations

from benchmarks.bench_fused import compare


def test_fused_and_sliced_engine_beat_sequential_stock_trl(tmp_path):
    ratios = compare(8, rounds=2, workdir=tmp_path, steps=8, batch=2)
    assert ratios["fused_vs_sliced"] >= 0.9, ratios
    assert ratios["fused_vs_sequential"] >= 1.1, ratios
    assert ratios["sliced_vs_sequential"] >= 1.1, ratios
