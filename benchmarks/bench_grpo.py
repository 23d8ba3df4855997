"""A GRPO sweep: fused (batched generation) vs time-sliced vs the configs one after another with stock
TRL, and the share of each way's time spent generating (CPU).

    python benchmarks/bench_grpo.py        # or: pytest -m bench benchmarks/bench_grpo.py --benchmark-only -s

N configs that differ in learning rate (the issue's sweep), STEPS steps each, PROMPTS prompts x
GENERATIONS completions of up to COMPLETION tokens per step, on RF_BENCH_MODEL (SmolLM2-135M from
`python benchmarks/smollm2.py`; default: the demo's tiny chat model). The ways run interleaved,
round by round, each in a worker thread (on this shared machine torch's OpenMP team in the
process's main thread runs 2.5-13x slower than in any other: `main_thread_vs_worker` measures that
effect on one stock config, the cause of a "stock is 4.9x slower" reading taken in a notebook's
main thread). Time in `generate` is measured by timing `GenerationMixin.generate` (every way's
generation goes through it once per call).

Environment: RF_BENCH_N, RF_BENCH_ROUNDS, RF_BENCH_STEPS, RF_BENCH_COMPLETION, RF_BENCH_MODEL,
RF_BENCH_MAIN_THREAD=1 (also time one stock config in the main thread).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_fused import _stock_device_args, create_model, in_worker_thread  # noqa: E402
from rapidfire_core import Experiment  # noqa: E402
from rapidfire_core.automl import List, RFGridSearch, RFGRPOConfig, RFLoraConfig, RFModelConfig  # noqa: E402
from rapidfire_core.demo.data import math_prompt_dataset  # noqa: E402
from rapidfire_core.demo.rewards import answer_reward, format_reward  # noqa: E402
from rapidfire_core.demo.tiny_model import demo_assets  # noqa: E402

STEPS = int(os.environ.get("RF_BENCH_STEPS", 2))
COMPLETION = int(os.environ.get("RF_BENCH_COMPLETION", 16))
PROMPTS, GENERATIONS = 4, 4
LEARNING_RATES = [1e-3, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5, 5e-6]
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
REWARDS = [answer_reward, format_reward]


def _args(lr: float) -> dict:
    return dict(
        learning_rate=lr,
        max_steps=STEPS,
        per_device_train_batch_size=PROMPTS * GENERATIONS,  # completions per step
        num_generations=GENERATIONS,
        max_completion_length=COMPLETION,
        logging_steps=1,
        seed=1,
    )


class GenerateClock:
    """Seconds spent inside `GenerationMixin.generate` while installed (outermost calls only)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = threading.local()

    @contextlib.contextmanager
    def installed(self):
        from transformers.generation.utils import GenerationMixin

        original = GenerationMixin.generate
        clock = self

        def generate(model, *args, **kwargs):
            depth = getattr(clock._depth, "n", 0)
            clock._depth.n = depth + 1
            start = time.perf_counter()
            try:
                return original(model, *args, **kwargs)
            finally:
                clock._depth.n = depth
                if depth == 0:
                    clock.seconds += time.perf_counter() - start

        GenerationMixin.generate = generate
        try:
            yield self
        finally:
            GenerationMixin.generate = original


def engine(model_dir: str, workdir: Path, n: int, execution: str) -> tuple[float, float, int]:
    """(seconds, seconds generating, generates that batched 2+ runs) of one run_fit of N configs."""
    group = List(
        [
            RFModelConfig(
                model_name=model_dir,
                peft_config=RFLoraConfig(**LORA),
                reward_funcs=REWARDS,
                training_args=RFGRPOConfig(**_args(lr)),
            )  # fmt: skip
            for lr in LEARNING_RATES[:n]
        ]
    )
    exp = Experiment(f"grpo-{execution}-{n}-{time.monotonic_ns()}", experiment_path=workdir, verbose=False)
    with GenerateClock().installed() as clock:
        start = time.perf_counter()
        exp.run_fit(RFGridSearch(group, trainer_type="GRPO"), create_model, math_prompt_dataset(64),
                    num_chunks=4, execution=execution)  # fmt: skip
        seconds = time.perf_counter() - start
    info = exp.get_runs_info()
    assert (info["status"] == "COMPLETED").all(), info["error"].tolist()
    batched = exp.controller.batched_generations
    exp.end()
    return seconds, clock.seconds, batched


def sequential_stock(model_dir: str, workdir: Path, n: int) -> tuple[float, float, int]:
    """(seconds, seconds generating, 0) of the N configs trained one after another with stock TRL."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    rows = math_prompt_dataset(64)
    with GenerateClock().installed() as clock:
        start = time.perf_counter()
        for i, lr in enumerate(LEARNING_RATES[:n]):
            model, tokenizer = create_model({"model_name": model_dir})
            args = GRPOConfig(output_dir=str(workdir / f"stock-{i}"), report_to="none", save_strategy="no",
                              disable_tqdm=True, **_stock_device_args(), **_args(lr))  # fmt: skip
            trainer = GRPOTrainer(model=model, reward_funcs=REWARDS, args=args, train_dataset=rows,
                                  processing_class=tokenizer, peft_config=LoraConfig(**LORA))  # fmt: skip
            trainer.train()
        seconds = time.perf_counter() - start
    return seconds, clock.seconds, 0


def compare(n: int, rounds: int, workdir: Path, model_dir: str | None = None) -> dict[str, float]:
    """Interleaved rounds of the three ways: the minimum seconds of each, its generation share,
    and the ratios."""
    model_dir = model_dir or os.environ.get("RF_BENCH_MODEL") or str(demo_assets().model_path)
    ways = {  # fused first: a cold process's first way pays its start-up, against the engine
        "fused": lambda: engine(model_dir, workdir, n, "fused"),
        "sliced": lambda: engine(model_dir, workdir, n, "sliced"),
        "sequential": lambda: sequential_stock(model_dir, workdir, n),
    }
    best: dict[str, tuple[float, float, int]] = {}
    for _ in range(rounds):
        for name, way in ways.items():
            result = in_worker_thread(way)
            print(
                f"  {name}: {result[0]:.1f} s, {result[1]:.1f} s generating, {result[2]} batched", flush=True
            )
            if name not in best or result[0] < best[name][0]:
                best[name] = result
    out = {f"{name}_s": s for name, (s, _, _) in best.items()}
    out |= {f"{name}_generation_share": g / s for name, (s, g, _) in best.items()}
    out |= {f"{name}_generation_s": g for name, (_, g, _) in best.items()}
    out["fused_vs_sequential"] = best["sequential"][0] / best["fused"][0]
    out["sliced_vs_sequential"] = best["sequential"][0] / best["sliced"][0]
    out["fused_vs_sliced"] = best["sliced"][0] / best["fused"][0]
    out["fused_generation_vs_sequential"] = best["sequential"][1] / best["fused"][1]
    out["fused_batched_generations"] = best["fused"][2]
    return out


def main_thread_vs_worker(workdir: Path, model_dir: str | None = None) -> dict[str, float]:
    """One stock config in the process's main thread and in a worker thread, interleaved twice."""
    model_dir = model_dir or os.environ.get("RF_BENCH_MODEL") or str(demo_assets().model_path)
    times: dict[str, list[float]] = {"main": [], "worker": []}
    for _ in range(2):
        times["worker"].append(in_worker_thread(lambda: sequential_stock(model_dir, workdir, 1))[0])
        times["main"].append(sequential_stock(model_dir, workdir, 1)[0])
    return {"stock_main_s": min(times["main"]), "stock_worker_s": min(times["worker"]),
            "main_thread_vs_worker": min(times["main"]) / min(times["worker"])}  # fmt: skip


@pytest.mark.bench
def test_grpo_fused_vs_sliced_vs_sequential(benchmark, tmp_path):
    result = benchmark.pedantic(compare, args=(4, 1, tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print("\n" + ", ".join(f"{k}={v:.3g}" for k, v in result.items()))


if __name__ == "__main__":
    import tempfile

    n = int(os.environ.get("RF_BENCH_N", 4))
    rounds = int(os.environ.get("RF_BENCH_ROUNDS", 1))
    with tempfile.TemporaryDirectory() as tmp:
        if os.environ.get("RF_BENCH_MAIN_THREAD") == "1":  # first: it also warms the process up
            print(", ".join(f"{k}={v:.3g}" for k, v in main_thread_vs_worker(Path(tmp)).items()), flush=True)
        result = compare(n, rounds, Path(tmp))
        print(", ".join(f"{k}={v:.3g}" for k, v in result.items()))
