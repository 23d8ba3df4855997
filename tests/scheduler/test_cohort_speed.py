"""The cheap speed-ratio check CI runs (the full figures: `make bench`, benchmarks/bench_fused.py).

8 LoRA configs on the demo's tiny model, 8 steps each at batch 2, interleaved rounds, the
minimum of each way. Measured on the 2-core dev machine (benchmarks/RESULTS.md): fused and
time-sliced both ~1.37-1.6x training the configs one after another with stock TRL, fused ~1.0x
sliced (on CPU a fused step does the same arithmetic as the runs' own steps; it saves per-op
overhead). The floors are below the figures so that they catch a regression (a fused path slower
than sliced, an engine slower than the status quo), not noise.

A busy machine (other processes on the same cores) slows whichever way runs while it is busy,
so one measurement can miss a floor with nothing wrong: the check measures again, up to
`ATTEMPTS` times, and fails only if every attempt misses. A real regression misses in all of
them; noise that hits one way in three separate interleaved measurements is rare. Each attempt is
itself two interleaved rounds (the minimum of each way is kept).
"""

from __future__ import annotations

from benchmarks.bench_fused import compare

ATTEMPTS = 3
FLOORS = {"fused_vs_sliced": 0.9, "fused_vs_sequential": 1.1, "sliced_vs_sequential": 1.1}


def _misses(ratios: dict[str, float]) -> dict[str, float]:
    return {name: ratios[name] for name, floor in FLOORS.items() if ratios[name] < floor}


def test_fused_and_sliced_engine_beat_sequential_stock_trl(tmp_path):
    attempts = []
    for attempt in range(ATTEMPTS):
        ratios = compare(8, rounds=2, workdir=tmp_path / str(attempt), steps=8, batch=2)
        attempts.append(ratios)
        if not _misses(ratios):
            return
    report = [{name: round(r[name], 3) for name in FLOORS} for r in attempts]
    raise AssertionError(f"every attempt missed a floor {FLOORS}: {report}")
