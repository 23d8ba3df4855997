"""Fused cohorts vs time-sliced vs N configs one after another with stock TRL (CPU).

    pytest -m bench benchmarks/bench_fused.py --benchmark-only    # one benchmark per (N, way)
    python benchmarks/bench_fused.py                              # the interleaved ratio table

Work per config: STEPS optimizer steps at batch BATCH on the demo's pretrained tiny chat model,
fp32, no eval set; N = 1, 2, 4, 8 configs that differ in LoRA rank, targets and learning rate.
Under pytest each way is its own benchmark (group ``fused-N=<n>``; the time is one whole
`run_fit`, or the N stock trainings, per round), so `pytest-benchmark compare` shows each; the
tokens TRL counted go to ``extra_info``. The script runs the three ways interleaved, round by
round (this machine is shared and noisy), and prints the ratios of the per-way minimum over
rounds with tokens/s.

Environment: RF_BENCH_N (e.g. "1,2,4,8"), RF_BENCH_ROUNDS (pytest: rounds per benchmark, default
3), RF_BENCH_STEPS, RF_BENCH_BATCH, and RF_BENCH_MODEL, a model folder instead of the tiny one
(e.g. SmolLM2-135M from `python benchmarks/smollm2.py`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.settings import bench_rounds  # noqa: E402
from rapidfire_core import Experiment  # noqa: E402
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig  # noqa: E402
from rapidfire_core.demo.data import formatting_function, support_dataset  # noqa: E402
from rapidfire_core.demo.tiny_model import demo_assets  # noqa: E402

STEPS = int(os.environ.get("RF_BENCH_STEPS", 16))
BATCH = int(os.environ.get("RF_BENCH_BATCH", 4))
ROWS, MAX_LENGTH = 64, 256
LORAS = [
    dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    dict(r=32, lora_alpha=64, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    dict(r=16, lora_alpha=16, target_modules="all-linear"),
    dict(r=4, lora_alpha=8, target_modules=["v_proj", "down_proj"]),
]
LEARNING_RATES = [1e-3, 3e-4]


def configs(n: int) -> list[tuple[dict, float]]:
    grid = [(lora, lr) for lr in LEARNING_RATES for lora in LORAS]
    return grid[:n]


def create_model(model_config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_config["model_name"])
    return model, AutoTokenizer.from_pretrained(model_config["model_name"])


def _args(lr: float, steps: int = STEPS, batch: int = BATCH) -> dict:
    return dict(
        learning_rate=lr,
        max_steps=steps,
        per_device_train_batch_size=batch,
        max_length=MAX_LENGTH,
        logging_steps=1,
    )


def _stock_device_args() -> dict:
    """What a user passes stock TRL on this device: CPU training in fp32 there; on a GPU, TRL's
    defaults (bf16 autocast), which is also what the engine leaves them at."""
    import torch

    return {} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False}


def engine(
    model_dir: str,
    workdir: Path,
    n: int,
    execution: str,
    num_chunks: int = 4,
    steps: int = STEPS,
    batch: int = BATCH,
    trackers: list[str] | None = None,
    num_gpus: int | None = None,
) -> tuple[float, int]:
    """(seconds, tokens) of one run_fit of the N configs (trackers: as `Experiment`'s; None: MLflow;
    num_gpus: as `Experiment`'s, N >= 2 trains on N executors, docs/scale-out.md)."""
    group = List(
        [
            RFModelConfig(
                model_name=model_dir,
                peft_config=RFLoraConfig(**lora),
                training_args=RFSFTConfig(**_args(lr, steps, batch)),
                formatting_func=formatting_function,
            )
            for lora, lr in configs(n)
        ]
    )
    exp = Experiment(
        f"bench-{execution}-{n}-{time.monotonic_ns()}",
        experiment_path=workdir,
        verbose=False,
        trackers=trackers,
        num_gpus=num_gpus,
    )
    start = time.perf_counter()
    exp.run_fit(
        RFGridSearch(group, trainer_type="SFT"),
        create_model,
        support_dataset(ROWS),
        num_chunks=num_chunks,
        execution=execution,
    )
    seconds = time.perf_counter() - start
    info = exp.get_runs_info()
    assert (info["status"] == "COMPLETED").all(), info["error"].tolist()
    results = exp.get_results()
    tokens = int(results.groupby("run_id")["num_tokens"].max().sum())
    exp.end()
    return seconds, tokens


def sequential_stock(
    model_dir: str, workdir: Path, n: int, steps: int = STEPS, batch: int = BATCH
) -> tuple[float, int]:
    """(seconds, tokens) of the N configs trained one after another with stock TRL."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    rows = support_dataset(ROWS).map(
        formatting_function, remove_columns=["instruction", "response", "intent", "category"]
    )
    start = time.perf_counter()
    tokens = 0
    for i, (lora, lr) in enumerate(configs(n)):
        model, tokenizer = create_model({"model_name": model_dir})
        args = SFTConfig(
            output_dir=str(workdir / f"stock-{i}"),
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            **_stock_device_args(),
            **_args(lr, steps, batch),
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=rows,
            processing_class=tokenizer,
            peft_config=LoraConfig(**lora),
        )
        trainer.train()
        tokens += int(trainer.state.num_input_tokens_seen or 0) or int(
            max(h.get("num_tokens", 0) for h in trainer.state.log_history)
        )
    return time.perf_counter() - start, tokens


def in_worker_thread(fn):
    """fn() in a fresh thread: on this shared machine torch's OpenMP team in the process's main
    thread runs 2.5-13x slower than in any other (spin-waiting; OMP_WAIT_POLICY=PASSIVE removes
    it), so every way runs off the main thread, as the engine's own runs do."""
    import threading

    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    if not out:
        raise RuntimeError("the benchmarked way failed (see the thread's traceback above)")
    return out[0]


def bench_model_dir() -> str:
    """RF_BENCH_MODEL, or the demo's tiny chat model."""
    return os.environ.get("RF_BENCH_MODEL") or str(demo_assets().model_path)


def ways(
    model_dir: str,
    workdir: Path,
    n: int,
    steps: int = STEPS,
    batch: int = BATCH,
    trackers: list[str] | None = None,
) -> dict:
    """The three ways to train N configs, each a () -> (seconds, tokens) (trackers: `engine`'s)."""
    return {
        "fused": lambda: engine(model_dir, workdir, n, "fused", steps=steps, batch=batch, trackers=trackers),
        "sliced": lambda: engine(
            model_dir, workdir, n, "sliced", steps=steps, batch=batch, trackers=trackers
        ),
        "sequential": lambda: sequential_stock(model_dir, workdir, n, steps, batch),
    }


def compare(n: int, rounds: int, workdir: Path, steps: int = STEPS, batch: int = BATCH) -> dict[str, float]:
    """Interleaved rounds of the three ways for N configs: min seconds each, and tokens/s."""
    best: dict[str, tuple[float, int]] = {}
    for _ in range(rounds):
        for name, way in ways(bench_model_dir(), workdir, n, steps, batch).items():
            seconds, tokens = in_worker_thread(way)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, tokens)
    out = {f"{name}_s": s for name, (s, _) in best.items()}
    out |= {f"{name}_tokens_per_s": t / s for name, (s, t) in best.items()}
    out["fused_vs_sequential"] = best["sequential"][0] / best["fused"][0]
    out["fused_vs_sliced"] = best["sliced"][0] / best["fused"][0]
    out["sliced_vs_sequential"] = best["sequential"][0] / best["sliced"][0]
    return out


@pytest.mark.bench
@pytest.mark.parametrize("way", ["fused", "sliced", "sequential"])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_train_n_configs(benchmark, tmp_path, n, way):
    """Seconds of one way to train N configs (a round: an Experiment with its `run_fit`, or the N
    stock trainings), in a worker thread as the engine computes."""
    benchmark.group = f"fused-N={n}"
    run = ways(bench_model_dir(), tmp_path, n)[way]
    tokens: list[int] = []
    benchmark.pedantic(lambda: tokens.append(in_worker_thread(run)[1]), rounds=bench_rounds(3), iterations=1)
    benchmark.extra_info.update(n=n, steps=STEPS, batch=BATCH, tokens=tokens[-1])


if __name__ == "__main__":
    import tempfile

    rounds = bench_rounds(3)
    for n in [int(x) for x in os.environ.get("RF_BENCH_N", "1,2,4,8").split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            result = compare(n, rounds, Path(tmp))
        print(f"N={n}: " + ", ".join(f"{k}={v:.3g}" for k, v in result.items()), flush=True)
