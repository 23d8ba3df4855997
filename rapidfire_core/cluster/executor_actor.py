"""The executor process: a Ray actor hosting the single-device engine (`LocalExecutor`) on its device.

The engine here is the very `scheduler.local_executor.LocalExecutor` that trains runs in the
user's process: one code path. What differs is its host (`BatchedHost`): the controller is in
another process, so the host calls the engine makes during a call (turn begins, metric rows,
progress, reports, notes) are collected, in order, and returned with the call's answer; the
controller-side proxy (`ray_executor.RayExecutor`) replays them on the real controller, as the
`scheduler.executor` design note allows. Commands: `should_pause` reads a pause the controller
requested (`request_pause`, answered while a turn trains: the actor runs calls on several
threads), and instead of applying commands the turn ends there (`take_turn` answers
paused=True); the controller applies them and calls `take_turn` again, and the runs continue
where they paused.

Nothing here touches the experiment's stores or needs its folder: a run arrives as a
`RunOrder` whose chunk checkpoint (to continue from) comes as its files' bytes, a finished
run's adapter (or model) goes back as bytes, and the controller writes every checkpoint. So an
executor's node needs no shared storage.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rapidfire_core.control.checkpoints import CheckpointStore
from rapidfire_core.scheduler.executor import RunOrder, RunOutcome, RunReport
from rapidfire_core.scheduler.local_executor import LocalExecutor
from rapidfire_core.scheduler.run import FitData
from rapidfire_core.trainers.datasets import FormattedDatasets
from rapidfire_core.trainers.shared_models import ModelRegistry


class PausedForCommands(BaseException):
    """Raised by `BatchedHost.apply_commands`: the turn ends at this optimizer-step boundary.

    A BaseException so that the engine's per-run `except Exception` (a run's own failure) lets it
    through; every run of the turn stands paused at a step boundary, as for a KeyboardInterrupt."""


@dataclass
class RunSnapshot:
    """A run as the progress display reads it (`scheduler.executor.RunProgress`), picklable."""

    run_id: int
    knobs: dict[str, Any]
    num_chunks: int
    chunks_done: int
    global_step: int
    max_steps: int
    latest: dict[str, float]

    @classmethod
    def of(cls, run: Any) -> RunSnapshot:
        return cls(run.run_id, dict(run.knobs), run.num_chunks, run.chunks_done, run.global_step,
                   run.max_steps, dict(run.latest))  # fmt: skip


def fit_inputs(fit: FitData) -> tuple[FitData, Any]:
    """(`fit` without its loaded base models and formatted datasets, the user's `create_model`):
    what an executor gets of a sweep; it builds its own registry next to its device."""
    return dataclasses.replace(fit, formatted=None, registry=None), fit.registry.create_model


class BatchedHost:
    """The controller's side as the engine in this actor sees it (module docstring).

    calls: ("turn_begins", snapshots, fused, joining), ("record", ...), ("progress", snapshot),
    ("note", text), ("report", RunReport with a snapshot), in the order they happened."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.in_flight_ids: set[int] = set()  # sent by the controller with each turn
        self.outputs: dict[int, Path] = {}  # each run's result folder here
        self.results: dict[int, tuple[str, dict[str, bytes]]] = {}  # finished runs' folders as bytes
        self.pause_requested = 0
        self.turn_pause_number = 0
        self._lock = threading.Lock()  # run threads record while the actor's other threads drain

    def _add(self, call: tuple) -> None:
        with self._lock:
            self.calls.append(call)

    def take_calls(self) -> list[tuple]:
        with self._lock:
            calls, self.calls = self.calls, []
        return calls

    def take_calls_before_report(self) -> list[tuple]:
        """The calls made so far up to the first report (which goes with its turn's answer)."""
        with self._lock:
            end = next((i for i, call in enumerate(self.calls) if call[0] == "report"), len(self.calls))
            calls, self.calls = self.calls[:end], self.calls[end:]
        return calls

    def turn_begins(self, runs: Sequence[Any], fused: bool = False, joining: bool = False) -> None:
        self._add(("turn_begins", [RunSnapshot.of(r) for r in runs], fused, joining))

    def in_flight(self, run_id: int) -> bool:
        return run_id in self.in_flight_ids

    def record(self, run_id: int, step: int, epoch: float | None, chunk: int, metrics: dict) -> None:
        self._add(("record", run_id, step, epoch, chunk, dict(metrics)))

    def on_progress(self, run: Any) -> None:
        self._add(("progress", RunSnapshot.of(run)))

    def should_pause(self) -> bool:
        return self.pause_requested > self.turn_pause_number

    def apply_commands(self) -> None:
        raise PausedForCommands

    def note(self, text: str) -> None:
        self._add(("note", text))

    def report(self, report: RunReport) -> None:
        if report.outcome is RunOutcome.FINISHED:
            self.results[report.run_id] = _folder_bytes(self.outputs[report.run_id])
        self._add(("report", dataclasses.replace(report, run=RunSnapshot.of(report.run))))


class ExecutorActor:
    """One executor (module docstring). A plain class: `ray_executor` makes it a Ray actor."""

    def __init__(self, index: int, threads: int | None) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self.index = index
        self.host = BatchedHost()
        self.engine = LocalExecutor()
        self.engine.connect(self.host)
        self.fits: dict[int, FitData] = {}  # each sweep's inputs, by the controller's key
        self.scratch = Path(tempfile.mkdtemp(prefix=f"rapidfire-executor-{index}-"))
        self.busy_seconds = 0.0
        self._takers: dict[int, Any] = {}  # the last `turn_takers` answer, by taker run id
        # Calls that touch the runs or the shared base model take turns: the actor answers on
        # several threads (request_pause must get through while a run trains).
        self._runs_lock = threading.RLock()

    def where(self) -> dict[str, Any]:
        """Node, device and process of this executor (`rapidfire runs`, the dashboard)."""
        import ray
        import torch

        device = "cpu"
        if torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
            device = f"cuda:{visible} ({torch.cuda.get_device_name(0)})"
        node_id = ray.get_runtime_context().get_node_id()
        return {"node": socket.gethostname(), "node_id": node_id, "device": device, "pid": os.getpid()}

    def add_fit(self, key: int, inputs: tuple[FitData, Any]) -> None:
        """Hold a sweep's inputs (`fit_inputs`); its runs' orders name them by `key`."""
        fit, create_model = inputs
        self.fits[key] = dataclasses.replace(
            fit, formatted=FormattedDatasets(fit.trainer_type), registry=ModelRegistry(create_model)
        )

    def place(self, order: RunOrder, fit_key: int, checkpoint: dict[str, bytes] | None, folder: str | None):
        """Build `order`'s run here (its fit, output folder and checkpoint are this process's).
        -> (Placement, the warm start's report of the layers it copied, or None), or ("error",
        text) when it cannot be built."""
        with self._runs_lock:
            fit = self.fits[fit_key]
            run_id = order.run_id
            fit.registry.free_adapter_name(f"run_{run_id}")  # it trained here before and moved away
            output = self.scratch / "runs" / str(run_id)
            resume = self._unpack(run_id, checkpoint, folder) if checkpoint is not None else None
            self.host.outputs[run_id] = output
            try:
                placement = self.engine.place(
                    dataclasses.replace(order, fit=fit, output_dir=output, resume_from=resume)
                )
            except Exception as exc:  # noqa: BLE001 - the controller fails the run with this reason
                return ("error", f"{type(exc).__name__}: {exc}")
            warm_report = order.warm_start.report if order.warm_start is not None else None
            return dataclasses.replace(placement, executor=f"executor {self.index}"), warm_report

    def _unpack(self, run_id: int, files: dict[str, bytes], folder: str):
        """Write a sent checkpoint's files here and read them back verified (checksums)."""
        directory = self.scratch / "checkpoints" / str(run_id)
        shutil.rmtree(directory, ignore_errors=True)
        (directory / folder).mkdir(parents=True)
        for name, content in files.items():
            (directory / folder / name).write_bytes(content)
        info = CheckpointStore(directory).latest()
        if info is None:
            raise RuntimeError(f"run {run_id}: the checkpoint it was sent does not verify")
        return info

    def start_fit(self, state_budget: int | None) -> None:
        with self._runs_lock:
            self.engine.start_fit(state_budget)

    def end_fit(self) -> None:
        with self._runs_lock:
            self.engine.end_fit()

    def turn_takers(self, run_ids: list[int], in_flight: list[int]) -> list[tuple[int, int, list[int]]]:
        """[(taker run id, its chunks_done, its members)] of `engine.turn_takers(run_ids)`."""
        with self._runs_lock:
            self.host.in_flight_ids = set(in_flight)
            takers = self.engine.turn_takers(run_ids)
            self._takers = {t.run_id: t for t in takers}
            return [(t.run_id, t.chunks_done, self.engine.members(t)) for t in takers]

    def take_turn(self, taker_id: int, in_flight: list[int], pause_number: int) -> dict[str, Any]:
        """One turn of the taker `taker_id` (of the last `turn_takers`): paused (for commands),
        the host calls it made, the result folders of runs that finished, seconds, fused counters."""
        with self._runs_lock:
            self.host.in_flight_ids = set(in_flight)
            self.host.turn_pause_number = pause_number
            stats = self.engine.stats
            before = (stats.fused_steps, stats.batched_generations, *stats.reference_sequences)
            began = time.perf_counter()
            paused = False
            try:
                self.engine.take_turn(self._takers[taker_id], ())
            except PausedForCommands:
                paused = True
            seconds = time.perf_counter() - began
            self.busy_seconds += seconds
            after = (stats.fused_steps, stats.batched_generations, *stats.reference_sequences)
            results, self.host.results = self.host.results, {}
            return {
                "paused": paused,
                "calls": self.host.take_calls(),
                "results": results,
                "seconds": seconds,
                "busy_seconds": self.busy_seconds,
                "counters": [a - b for a, b in zip(after, before, strict=True)],
            }

    def drain(self) -> list[tuple]:
        """The host calls the turn in flight made so far, up to its first report: metric rows and
        progress reach the controller's stores while the turn trains (answered meanwhile)."""
        return self.host.take_calls_before_report()

    def request_pause(self, number: int) -> None:
        """The training runs pause at their next optimizer step (commands wait at the controller)."""
        self.host.pause_requested = max(self.host.pause_requested, number)

    def call(self, method: str, *args: Any) -> Any:
        """engine.<method>(*args) for the calls that answer plainly (capture, park, unpark,
        warm_start_from, remove, interrupt, close); a progress answer as a snapshot."""
        with self._runs_lock:
            answer = getattr(self.engine, method)(*args)
            if method == "progress":
                return RunSnapshot.of(answer)
            if method == "close":
                shutil.rmtree(self.scratch, ignore_errors=True)
            return answer


def _folder_bytes(folder: Path) -> tuple[str, dict[str, bytes]]:
    """(the result folder's name: adapter or model, {relative path: bytes}) of a finished run."""
    (result,) = [p for p in folder.iterdir() if p.is_dir()]
    files = {str(p.relative_to(result)): p.read_bytes() for p in result.rglob("*") if p.is_file()}
    shutil.rmtree(folder, ignore_errors=True)
    return result.name, files


__all__ = ["BatchedHost", "ExecutorActor", "PausedForCommands", "RunSnapshot", "fit_inputs"]
