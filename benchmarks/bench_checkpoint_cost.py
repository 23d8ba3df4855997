"""The cost of chunk checkpoints: time spent persisting run state as a share of wall time.

    python benchmarks/bench_checkpoint_cost.py                      # the demo sweep (tiny model)
    python benchmarks/bench_checkpoint_cost.py --model DIR --steps 16 --rows 64   # e.g. SmolLM2-135M

The demo's sweep (4 LoRA configs: r 8 / 32 x lr 1e-3 / 1e-4; `rapidfire_core.demo.main`) with a
checkpoint at every chunk end (the default): `RunController.persist_seconds` is the time spent
persisting on the training path (the executor's host copy of adapter, optimizer, scheduler and
RNG state, and the controller's metric flush), `write_seconds` the writer's (files, fsyncs, rename),
measured against the wall time of `run_fit`. On the training path: the metric flush and the host
copy of the state; the files (write, fsync, manifest, rename, pruning) go to a background
writer thread (`scheduler.checkpoint_writer`), whose time is reported beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local model folder (default: the demo's tiny chat model)")
    parser.add_argument("--steps", type=int, default=None, help="max_steps per run (default: the demo's)")
    parser.add_argument("--rows", type=int, default=None, help="training rows (default: the demo's)")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of (checkpoints, none)")
    args = parser.parse_args()
    for index in range(args.rounds):
        with_checkpoints = _measure(args, checkpoints=True)
        without = _measure(args, checkpoints=False)
        print(f"round {index + 1}: run_fit wall {with_checkpoints:.1f} s with a checkpoint per chunk, "
              f"{without:.1f} s with checkpoints switched off: {100 * (with_checkpoints / without - 1):+.1f}%")  # fmt: skip


def _measure(args, checkpoints: bool) -> float:
    from rapidfire_core import Experiment
    from rapidfire_core.automl import RFGridSearch
    from rapidfire_core.demo.main import DEFAULT_MAX_STEPS, _quiet_libraries, load_support_data, sweep_configs
    from rapidfire_core.demo.tiny_model import create_model, demo_assets, single_thread
    from rapidfire_core.scheduler.controller import RunController

    _quiet_libraries()
    model = args.model or str(demo_assets().model_path)
    train, evals = load_support_data(None)
    if args.rows:
        train = train.select(range(args.rows))
        evals = evals.select(range(min(len(evals), max(4, args.rows // 8))))
    configs = sweep_configs(model, max_steps=args.steps or DEFAULT_MAX_STEPS)
    threads = single_thread() if args.model is None else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as root, threads, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = Experiment("checkpoint-cost", experiment_path=root, verbose=False)
        if not checkpoints:  # the baseline: the same sweep, no run state captured or written at chunk
            # ends (MLflow gets each run's metrics when it ends; its writes are queued either way)
            for executor in exp.controller.executors:
                executor.capture = lambda run_id: None
        began = time.perf_counter()
        exp.run_fit(RFGridSearch(configs, trainer_type="SFT"), create_model, train, evals,
                    num_chunks=args.chunks, seed=42)  # fmt: skip
        wall = time.perf_counter() - began
        controller = exp.controller
        info = exp.get_runs_info()
        on_disk = sum(f.stat().st_size for f in Path(exp.path, "runs").rglob("checkpoints/*/*"))
        exp.end()
    persisted, count, written = (
        controller.persist_seconds,
        controller.checkpoints_written,
        controller.write_seconds,
    )
    assert isinstance(controller, RunController)
    print(f"{'with' if checkpoints else 'without'} checkpoints, model {model}: {len(info)} runs, {int(info['global_step'].sum())} steps, {args.chunks} chunks, "
          f"statuses {sorted(set(info['status']))}")  # fmt: skip
    print(f"wall {wall:.1f} s; {count} checkpoints; on the training path (flush + host copy) "
          f"{persisted:.2f} s = {100 * persisted / wall:.2f}% of wall time "
          f"({1000 * persisted / max(count, 1):.1f} ms each); background writer {written:.2f} s "
          f"({1000 * written / max(count, 1):.1f} ms each, {100 * written / wall:.2f}% of wall time if it "
          f"were not hidden); {on_disk / 2**20:.1f} MiB kept on disk (last 2 per run)")  # fmt: skip
    return wall


if __name__ == "__main__":
    main()
