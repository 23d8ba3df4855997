"""Executors on Ray (CPU): 2 executors x 1 thread vs 1 process x 2 threads vs sequential stock
TRL, and the cost of moving a run between executors.

    python benchmarks/bench_executors.py [--configs 8] [--steps 8] [--rounds 2]
    pytest -m bench benchmarks/bench_executors.py

The work is `bench_fused`'s (N LoRA configs on the demo's tiny chat model, fp32, no eval set).
Three ways, in interleaved rounds (the min of each is reported, and the ratios):

    executors   Experiment(num_gpus=2, num_cpus=1): 2 Ray actors of 1 CPU thread each, runs
                placed at chunk boundaries (time-sliced on each). Its wall time includes
                starting the executors (the actors up and answering; each builds its base
                model when its first run is placed, which stays counted);
                `executors_ready_s` says how much the start was, and
                `executors_started_vs_one` is the ratio with it left out (a long sweep, or a
                second run_fit of the same experiment, pays it once).
    one         the single-device engine in this process with 2 threads, time-sliced
                (execution="sliced": the same per-run work as the executors do)
    sequential  the N configs one after another with stock TRL, 2 threads

Then one sweep with every run moved at every chunk (`RotatingPlacement`): the mean cost of a
move (the controller removes the run from its executor, reads its chunk checkpoint and sends the
files to the other executor, which writes them, builds the run's trainer and loads the state) in
ms, and per MB of checkpoint (a run's first move, before any checkpoint, sends none: counted in
the moves, so the per-MB figure is an upper bound);
and the object store alone for the same bytes (put + get), with and without zero-copy tensors.
A Ray of 2 CPUs is started once, before the rounds (not counted).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_fused import ROWS, _args, configs, create_model, in_worker_thread, sequential_stock  # noqa: E402
from rapidfire_core import Experiment  # noqa: E402
from rapidfire_core.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig  # noqa: E402
from rapidfire_core.demo.data import formatting_function, support_dataset  # noqa: E402
from rapidfire_core.demo.tiny_model import demo_assets  # noqa: E402


def _group(model_dir: str, n: int, steps: int) -> RFGridSearch:
    runs = [
        RFModelConfig(model_name=model_dir, peft_config=RFLoraConfig(**lora),
                      training_args=RFSFTConfig(**_args(lr, steps)), formatting_func=formatting_function)
        for lora, lr in configs(n)
    ]  # fmt: skip
    return RFGridSearch(List(runs), trainer_type="SFT")


def fit(
    model_dir: str, workdir: Path, n: int, steps: int, executors: int | None, rotate: bool = False
) -> dict:
    """One run_fit of the N configs: seconds (the executors' start included), and the executors'
    counters (moves, their seconds and checkpoint bytes sent, start time)."""
    from rapidfire_core.cluster.parallel_rounds import parallel_rounds
    from rapidfire_core.cluster.placement import RotatingPlacement

    threads = 1 if executors else 2
    start = time.perf_counter()
    exp = Experiment(f"bench-{executors}-{time.monotonic_ns()}", experiment_path=workdir, verbose=False,
                     num_gpus=executors, num_cpus=threads)  # fmt: skip
    made = time.perf_counter()
    controller = exp.controller  # with executors: they start now (actors up, each answered once)
    ready = time.perf_counter() - made
    if rotate:
        controller.round_loop = parallel_rounds(RotatingPlacement())
    exp.run_fit(
        _group(model_dir, n, steps), create_model, support_dataset(ROWS), num_chunks=4, execution="sliced"
    )
    out = {"seconds": time.perf_counter() - start}
    info = exp.get_runs_info()
    assert (info["status"] == "COMPLETED").all(), info["error"].tolist()
    if executors:
        rounds = controller.round_loop.last
        sent = sum(e.checkpoint_bytes_sent for e in rounds.executors)
        out |= {"moves": rounds.moves, "move_seconds": sum(rounds.move_seconds), "move_bytes": sent,
                "ready_s": ready}  # fmt: skip
    exp.end()
    return out


def object_store_seconds(num_bytes: int, repeats: int = 3) -> dict[str, float]:
    """put + get of `num_bytes` through Ray's object store: as bytes (what a move sends) and as
    an fp32 tensor (what a chunk end sends back), min over `repeats`."""
    import ray
    import torch

    payload = os.urandom(num_bytes)
    tensor = torch.randn(max(num_bytes // 4, 1))
    best = {"bytes_s": float("inf"), "tensor_s": float("inf")}
    for _ in range(repeats):
        for name, value in (("bytes_s", payload), ("tensor_s", tensor)):
            start = time.perf_counter()
            ray.get(ray.put(value))
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def compare(n: int, steps: int, rounds: int, workdir: Path) -> dict[str, float]:
    """Interleaved rounds of the three ways, then the move sweep (module docstring)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    model_dir = os.environ.get("RF_BENCH_MODEL") or str(demo_assets().model_path)
    ways = {
        "executors": lambda: fit(model_dir, workdir, n, steps, executors=2),
        "one": lambda: fit(model_dir, workdir, n, steps, executors=None),
        "sequential": lambda: _two_threads(
            lambda: {"seconds": sequential_stock(model_dir, workdir, n, steps)[0]}
        ),
    }
    best: dict[str, dict] = {}
    for index in range(rounds):
        for name, way in ways.items():
            result = in_worker_thread(way)
            print(f"round {index + 1} {name}: {result['seconds']:.1f} s", flush=True)
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    out = {f"{name}_s": r["seconds"] for name, r in best.items()}
    out["executors_ready_s"] = best["executors"]["ready_s"]
    trained = best["executors"]["seconds"] - best["executors"]["ready_s"]  # the executors' start left out
    out["executors_vs_one"] = best["one"]["seconds"] / best["executors"]["seconds"]
    out["executors_started_vs_one"] = best["one"]["seconds"] / trained
    out["executors_vs_sequential"] = best["sequential"]["seconds"] / best["executors"]["seconds"]
    out["one_vs_sequential"] = best["sequential"]["seconds"] / best["one"]["seconds"]
    moved = in_worker_thread(lambda: fit(model_dir, workdir, n, steps, executors=2, rotate=True))
    moved["moves"] = max(moved["moves"], 1)
    per_move_mb = moved["move_bytes"] / moved["moves"] / 2**20
    out |= {
        "moves": moved["moves"],
        "move_ms": 1000 * moved["move_seconds"] / moved["moves"],
        "move_mb": per_move_mb,
    }
    out["move_ms_per_mb"] = out["move_ms"] / per_move_mb
    store = object_store_seconds(int(moved["move_bytes"] / moved["moves"]))
    out["object_store_ms_per_mb_bytes"] = 1000 * store["bytes_s"] / per_move_mb
    out["object_store_ms_per_mb_tensor"] = 1000 * store["tensor_s"] / per_move_mb
    return out


def _two_threads(fn):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


@pytest.mark.bench
def test_executors_vs_one_process_vs_sequential(benchmark, tmp_path):
    result = benchmark.pedantic(
        compare, kwargs={"n": 4, "steps": 8, "rounds": 1, "workdir": tmp_path}, rounds=1, iterations=1
    )
    benchmark.extra_info.update(result)
    assert result["moves"] > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        result = compare(args.configs, args.steps, args.rounds, Path(root))
    for key, value in result.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
