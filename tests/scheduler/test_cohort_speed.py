"""The cheap speed-ratio check CI runs (the full figures: `make bench`, benchmarks/bench_fused.py).

4 LoRA configs on the demo's tiny model, 8 steps each at batch 2, interleaved rounds, the
minimum of each way. On CPU a fused step does the same arithmetic as the runs' own steps (the
matmuls are not overhead-bound), so fused and time-sliced run at about the same speed here
(benchmarks/RESULTS.md); both are well ahead of training the configs one after another with
stock TRL, which loads the model and prepares the data once per config. The floors catch a
regression (a fused path much slower than sliced, or an engine that lost its lead over the
status quo) without flaking on a busy 2-core machine.
"""

from __future__ import annotations

from benchmarks.bench_fused import compare


def test_fused_cohort_keeps_up_with_sliced_and_beats_sequential_stock_trl(tmp_path):
    ratios = compare(4, rounds=2, workdir=tmp_path, steps=8, batch=2)
    assert ratios["fused_vs_sequential"] >= 1.2, ratios
    assert ratios["fused_vs_sliced"] >= 0.8, ratios
