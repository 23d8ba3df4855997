"""Fused cohorts vs time-sliced vs N sequential stock-TRL runs on a 1B-class Llama (GPU report).

What issue 11 asks of a GPU machine, as one script that fits one 10-minute device call: N = 1,
4, 8 SFT LoRA configs (bench_fused's ranks, targets and learning rates) on a random-weight
Llama with TinyLlama-1.1B's shape (22 layers, hidden 2048, intermediate 5632, 32 heads, 4 KV
heads, vocab 32000), bf16 weights, TRL's defaults on a GPU (bf16 autocast, gradient
checkpointing), STEPS optimizer steps per config at batch 2 x max_length 256 (<= 512 tokens per
run per step), no eval set, no tracker (the device machine has no MLflow; stock TRL runs with
report_to="none"). Per way: seconds, aggregate tokens/s (tokens TRL counted) and peak GPU
memory; one round each, fused first.

    python benchmarks/bench_fused_gpu.py                  # RF_GPU_N=1,4,8 RF_BENCH_STEPS=8
    pytest -m bench benchmarks/bench_fused_gpu.py --benchmark-only   # one benchmark per (N, way)
    RF_GPU_SHAPE=tiny python benchmarks/bench_fused_gpu.py  # the same code on a small shape (CPU check)

Writes one JSON line per N to stdout and, if $OUT is set, to $OUT/bench_fused_gpu.json.
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

from benchmarks.bench_fused import in_worker_thread, ways  # noqa: E402
from benchmarks.settings import bench_rounds  # noqa: E402

# `tiny_llama_config` arguments: TinyLlama-1.1B's shape, and the demo model's (its defaults).
SHAPES = {
    "1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_layers=22,
        num_heads=32,
        num_kv_heads=4,
    ),
    "tiny": dict(vocab_size=768),
}
BATCH = 2


def build_model(folder: Path, shape: str) -> str:
    """A random-weight Llama of ``shape`` with the demo's tokenizer (its ids fit any vocab here)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from rapidfire_core.demo.tiny_model import demo_assets, tiny_llama_config

    tokenizer = AutoTokenizer.from_pretrained(demo_assets().tokenizer_path)
    config = tiny_llama_config(tokenizer=tokenizer, **SHAPES[shape])
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _measured(way) -> dict:
    """seconds, tokens/s and peak GPU memory of one way, run off the main thread."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds, tokens = in_worker_thread(way)
    out = {"s": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
    if torch.cuda.is_available():
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def compare(model_dir: str, workdir: Path, n: int, steps: int) -> dict:
    result: dict = {"n": n, "steps": steps}
    for name, way in ways(model_dir, workdir, n, steps, BATCH, trackers=[]).items():
        result[name] = _measured(way)
    result["fused_vs_sliced"] = round(result["sliced"]["s"] / result["fused"]["s"], 3)
    result["fused_vs_sequential"] = round(result["sequential"]["s"] / result["fused"]["s"], 3)
    result["sliced_vs_sequential"] = round(result["sequential"]["s"] / result["sliced"]["s"], 3)
    return result


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return build_model(tmp_path_factory.mktemp("gpu-bench") / "model", os.environ.get("RF_GPU_SHAPE", "1b"))


@pytest.mark.bench
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (a 1B-class model in bf16)")
@pytest.mark.parametrize("way", ["fused", "sliced", "sequential"])
@pytest.mark.parametrize("n", [1, 4, 8])
def test_train_n_configs_gpu(benchmark, model_dir, tmp_path, n, way):
    """Seconds of one way to train N configs on the 1B-class shape (a round: one `run_fit`, or the
    N stock trainings); tokens/s and peak GPU memory of the last round in ``extra_info``."""
    benchmark.group = f"fused-gpu-N={n}"
    steps = int(os.environ.get("RF_BENCH_STEPS", 8))
    run = ways(model_dir, tmp_path, n, steps, BATCH, trackers=[])[way]
    last: list[dict] = []
    benchmark.pedantic(lambda: last.append(_measured(run)), rounds=bench_rounds(1), iterations=1)
    benchmark.extra_info.update(n=n, steps=steps, **last[-1])


def main() -> None:
    shape = os.environ.get("RF_GPU_SHAPE", "1b")
    steps = int(os.environ.get("RF_BENCH_STEPS", 8))
    counts = [int(x) for x in os.environ.get("RF_GPU_N", "1,4,8").split(",")]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model", shape)
        for n in counts:
            result = {"device": device, "shape": shape, **compare(model_dir, Path(tmp), n, steps)}
            print(json.dumps(result), flush=True)
            lines.append(json.dumps(result))
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "bench_fused_gpu.json").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
