"""The cheap speed-ratio check CI runs (the full figures: `make bench`, benchmarks/bench_fused.py).

8 LoRA configs on the demo's tiny model, 8 steps each at batch 2, interleaved rounds, the
minimum of each way. On CPU a fused step does the same arithmetic as the runs' own steps; what
it saves is per-op overhead, so here fused is ~1.2x time-sliced and, at N=8, ~1.3x training the
configs one after another with stock TRL (benchmarks/RESULTS.md). The floors are below those
figures so that they catch a regression (a fused path slower than sliced, an engine slower than
the status quo) without flaking on a busy 2-core machine.
"""

from __future__ import annotations

from benchmarks.bench_fused import compare


def test_fused_cohort_keeps_up_with_sliced_and_beats_sequential_stock_trl(tmp_path):
    ratios = compare(8, rounds=2, workdir=tmp_path, steps=8, batch=2)
    assert ratios["fused_vs_sliced"] >= 0.9, ratios
    assert ratios["fused_vs_sequential"] >= 1.0, ratios
