"""The cost of chunk checkpoints: time spent persisting run state as a share of wall time.

    python benchmarks/bench_checkpoint_cost.py                      # the demo sweep (tiny model)
    python benchmarks/bench_checkpoint_cost.py --model DIR --steps 16 --rows 64   # e.g. SmolLM2-135M
    pytest -m bench benchmarks/bench_checkpoint_cost.py --benchmark-only   # with / without, the demo sweep

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
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.settings import bench_rounds  # noqa: E402


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


class CheckpointSweep:
    """The demo's sweep in a fresh Experiment, with or without chunk checkpoints; `run` is what
    the benchmark times (`run_fit` alone), `end` reports and closes."""

    def __init__(self, checkpoints: bool, model: str | None = None, steps=None, rows=None, chunks=4) -> None:
        from rapidfire_core import Experiment
        from rapidfire_core.demo.main import (
            DEFAULT_MAX_STEPS,
            _quiet_libraries,
            load_support_data,
            sweep_configs,
        )
        from rapidfire_core.demo.tiny_model import demo_assets, single_thread

        _quiet_libraries()
        self.checkpoints, self.chunks = checkpoints, chunks
        self.model = model or str(demo_assets().model_path)
        self.train, self.evals = load_support_data(None)
        if rows:
            self.train = self.train.select(range(rows))
            self.evals = self.evals.select(range(min(len(self.evals), max(4, rows // 8))))
        self.configs = sweep_configs(self.model, max_steps=steps or DEFAULT_MAX_STEPS)
        self._stack = contextlib.ExitStack()
        root = self._stack.enter_context(tempfile.TemporaryDirectory())
        self._stack.enter_context(single_thread() if model is None else contextlib.nullcontext())
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        self.exp = Experiment("checkpoint-cost", experiment_path=root, verbose=False)
        if not checkpoints:  # the baseline: the same sweep, no run state captured or written at chunk
            # ends (MLflow gets each run's metrics when it ends; its writes are queued either way)
            for executor in self.exp.controller.executors:
                executor.capture = lambda run_id: None

    def run(self) -> float:
        """Wall seconds of `run_fit`."""
        from rapidfire_core.automl import RFGridSearch
        from rapidfire_core.demo.tiny_model import create_model

        began = time.perf_counter()
        self.exp.run_fit(RFGridSearch(self.configs, trainer_type="SFT"), create_model, self.train, self.evals,
                         num_chunks=self.chunks, seed=42)  # fmt: skip
        self.wall = time.perf_counter() - began
        return self.wall

    def end(self) -> dict:
        """What the run persisted, then the Experiment closed and its folder removed."""
        controller = self.exp.controller
        info = self.exp.get_runs_info()
        on_disk = sum(f.stat().st_size for f in Path(self.exp.path, "runs").rglob("checkpoints/*/*"))
        self.exp.end()
        self._stack.close()
        assert (info["status"] == "COMPLETED").all(), info["error"].tolist()
        return {
            "runs": len(info),
            "steps": int(info["global_step"].sum()),
            "checkpoints": controller.checkpoints_written,
            "persist_s": controller.persist_seconds,
            "write_s": controller.write_seconds,
            "on_disk_mib": on_disk / 2**20,
        }


def _measure(args, checkpoints: bool) -> float:
    sweep = CheckpointSweep(checkpoints, args.model, args.steps, args.rows, args.chunks)
    wall = sweep.run()
    out = sweep.end()
    count, persisted, written = out["checkpoints"], out["persist_s"], out["write_s"]
    print(f"{'with' if checkpoints else 'without'} checkpoints, model {sweep.model}: {out['runs']} runs, {out['steps']} steps, {args.chunks} chunks")  # fmt: skip
    print(f"wall {wall:.1f} s; {count} checkpoints; on the training path (flush + host copy) "
          f"{persisted:.2f} s = {100 * persisted / wall:.2f}% of wall time "
          f"({1000 * persisted / max(count, 1):.1f} ms each); background writer {written:.2f} s "
          f"({1000 * written / max(count, 1):.1f} ms each, {100 * written / wall:.2f}% of wall time if it "
          f"were not hidden); {out['on_disk_mib']:.1f} MiB kept on disk (last 2 per run)")  # fmt: skip
    return wall


@pytest.mark.bench
@pytest.mark.benchmark(group="checkpoint-cost")
@pytest.mark.parametrize("checkpoints", [True, False], ids=["checkpoint-per-chunk", "no-checkpoints"])
def test_run_fit(benchmark, checkpoints):
    """Seconds of the demo sweep's `run_fit`, with a checkpoint at every chunk end or none;
    what the checkpoints cost on the training path and in the writer, in ``extra_info``."""
    sweeps: list[CheckpointSweep] = []
    reports: list[dict] = []
    benchmark.pedantic(
        lambda: sweeps[-1].run(),
        setup=lambda: sweeps.append(CheckpointSweep(checkpoints)),
        teardown=lambda: reports.append(sweeps[-1].end()),
        rounds=bench_rounds(2),
        iterations=1,
    )
    benchmark.extra_info.update(reports[-1])


if __name__ == "__main__":
    main()
