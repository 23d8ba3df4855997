"""The arithmetic a fused step saves: one forward+backward of N members' batches through their
adapters (the cohort's compute, `trainers.fused_calls`) vs N forward+backward passes, one per
adapter (what N time-sliced or sequential runs compute), on the same PEFT model.

No trainer, engine or thread hand-off: only the model's compute, so the ratio says what fusion
can save on this device before any engine overhead. Work: the demo's tiny chat model (or
RF_BENCH_MODEL) with the N LoRA adapters of `bench_fused` (ranks 8/32/16/4, different targets),
gradient checkpointing as TRL's default, 4 sequences of 230 tokens per member, fp32. The loss
is the model's own (``labels=``: full logits), not TRL's chunked fused head, so on a large
vocabulary the LM head weighs more here than in a TRL step.

    pytest -m bench benchmarks/bench_fused_compute.py --benchmark-only   # one benchmark per (N, way)
    python benchmarks/bench_fused_compute.py         # RF_BENCH_N (default 4), RF_BENCH_ROUNDS (5)

Under pytest a round is one way's passes (group ``fused-compute-N=<n>``); the script interleaves
the two ways and prints their ratio.
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

from benchmarks.bench_fused import LORAS, in_worker_thread  # noqa: E402
from benchmarks.settings import bench_rounds  # noqa: E402
from rapidfire_core.lora.context import LoraBatch, backward_batch, lora_batch  # noqa: E402
from rapidfire_core.lora.peft_segments import segment_forward  # noqa: E402

ROWS, LENGTH = 4, 230


def _model(n: int, lora_dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rapidfire_core.demo.tiny_model import demo_assets

    model = AutoModelForCausalLM.from_pretrained(
        os.environ.get("RF_BENCH_MODEL") or str(demo_assets().model_path)
    )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    peft_model = get_peft_model(model, LoraConfig(**LORAS[0], lora_dropout=lora_dropout), adapter_name="a0")
    for i in range(1, n):
        peft_model.add_adapter(f"a{i}", LoraConfig(**LORAS[i % len(LORAS)], lora_dropout=lora_dropout))
    peft_model.train()
    return peft_model


def _trainable(model, adapters: set[str]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name and name.split(".")[-2] in adapters)


def separate(model, batches: list[torch.Tensor]) -> None:
    """N passes, each through one adapter (PEFT's own forward)."""
    for i, ids in enumerate(batches):
        model.base_model.set_adapter(f"a{i}")
        _trainable(model, {f"a{i}"})
        model(input_ids=ids, labels=ids).loss.backward()


def fused(model, batches: list[torch.Tensor], streams: list | None = None) -> None:
    """One pass over the concatenated batches, rows split among the adapters (streams: each
    member's dropout from its own RNG stream, `lora.run_streams`; None: one mask for all rows)."""
    ids = torch.cat(batches)
    _trainable(model, {f"a{i}" for i in range(len(batches))})
    segments = [(f"a{i}", b.numel()) for i, b in enumerate(batches)]
    batch = LoraBatch(segments, ids.device, streams=streams)
    with segment_forward(model), lora_batch(batch):
        loss = model(input_ids=ids, labels=ids).loss
    with segment_forward(model), backward_batch(batch):
        loss.backward()


def compare(n: int, rounds: int) -> dict[str, float]:
    """Min seconds per way over interleaved rounds (in a non-main thread, as the engine computes)."""
    torch.manual_seed(0)
    model = _model(n)
    vocab = model.config.vocab_size
    batches = [torch.randint(4, vocab, (ROWS, LENGTH)) for _ in range(n)]
    best = {"separate": float("inf"), "fused": float("inf")}

    def measure() -> None:
        for _ in range(rounds):
            for name, way in (("separate", separate), ("fused", fused)):
                start = time.perf_counter()
                way(model, batches)
                best[name] = min(best[name], time.perf_counter() - start)

    thread = threading.Thread(target=measure)
    thread.start()
    thread.join()
    return {
        "separate_s": best["separate"],
        "fused_s": best["fused"],
        "fused_vs_separate": best["separate"] / best["fused"],
    }


@pytest.mark.bench
@pytest.mark.parametrize("way", ["separate", "fused"])
@pytest.mark.parametrize("n", [4, 8])
def test_forward_backward(benchmark, n, way):
    """Seconds of one forward+backward of N members' batches, fused or one pass per adapter."""
    benchmark.group = f"fused-compute-N={n}"
    torch.manual_seed(0)
    model = _model(n)
    batches = [torch.randint(4, model.config.vocab_size, (ROWS, LENGTH)) for _ in range(n)]
    step = {"separate": separate, "fused": fused}[way]
    benchmark.pedantic(
        lambda: in_worker_thread(lambda: step(model, batches)),
        rounds=bench_rounds(5),
        iterations=1,
        warmup_rounds=1,
    )
    benchmark.extra_info.update(n=n, rows=ROWS, length=LENGTH)


if __name__ == "__main__":
    n = int(os.environ.get("RF_BENCH_N", 4))
    result = compare(n, bench_rounds(5))
    print(f"N={n}: " + ", ".join(f"{k}={v:.3g}" for k, v in result.items()))
