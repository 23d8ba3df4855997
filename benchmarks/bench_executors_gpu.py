"""Several GPUs: 8 LoRA configs on 1, 2 and 4 executors (one GPU each), one call.

    python benchmarks/bench_executors_gpu.py          # RF_GPU_EXECUTORS=1,2,4 RF_BENCH_STEPS=8
    RF_GPU_SHAPE=tiny RF_GPU_EXECUTORS=1,2 python benchmarks/bench_executors_gpu.py   # CPU check

`bench_fused_gpu`'s work (a random-weight Llama of TinyLlama-1.1B's shape, bf16, batch 2 x 256
tokens, RF_BENCH_STEPS steps per config, no tracker), 8 configs with the default execution
("auto": the 8 runs fuse; N executors train N fused cohorts of 8/N): N = 1 is the
single-device engine in this process, N >= 2 is `Experiment(num_gpus=N)` (a local Ray with the
machine's GPUs, started before the timings; starting the executors, each loading its base
model, is inside the wall time `s`). Counts
above the GPUs present are skipped. Per N: seconds, aggregate tokens/s, and the speed-up over
N = 1 (the design's goal: 2 GPUs >= 1.8x). Without GPUs (the tiny check) each executor is a CPU
executor of one thread.

Writes one JSON line per N to stdout and, if $OUT is set, to $OUT/bench_executors_gpu.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_fused import engine, in_worker_thread  # noqa: E402
from benchmarks.bench_fused_gpu import BATCH, build_model  # noqa: E402

CONFIGS = 8


@pytest.mark.bench
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (N = 1, 2, 4 executors, one per GPU)"
)
def test_executors_gpu_report(benchmark):
    benchmark.pedantic(main, rounds=1, iterations=1)


def main() -> None:
    shape = os.environ.get("RF_GPU_SHAPE", "1b")
    steps = int(os.environ.get("RF_BENCH_STEPS", 8))
    counts = [int(x) for x in os.environ.get("RF_GPU_EXECUTORS", "1,2,4").split(",")]
    gpus = torch.cuda.device_count()
    device = torch.cuda.get_device_name() if gpus else "cpu"
    lines, base = [], None
    if max(counts) > 1:  # Ray itself starts once, outside the timings (14-22 s on a small box)
        from rapidfire_core.cluster.ray_runtime import connect

        connect(min(max(counts), gpus) if gpus else max(counts), None, None)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model", shape)
        for n in counts:
            if gpus and n > gpus:
                print(json.dumps({"executors": n, "skipped": f"{gpus} GPU(s) here"}), flush=True)
                continue
            seconds, tokens = in_worker_thread(
                lambda n=n: engine(
                    model_dir,
                    Path(tmp),
                    CONFIGS,
                    "auto",
                    steps=steps,
                    batch=BATCH,
                    trackers=[],
                    num_gpus=n if n > 1 else None,
                )
            )
            base = base or seconds
            result = {"device": device, "gpus": gpus, "shape": shape, "configs": CONFIGS, "steps": steps,
                      "executors": n, "s": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
                      "speedup_vs_1": round(base / seconds, 3)}  # fmt: skip
            print(json.dumps(result), flush=True)
            lines.append(json.dumps(result))
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "bench_executors_gpu.json").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
