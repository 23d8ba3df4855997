"""An executor on Ray: the controller-side `scheduler.executor.Executor` of one executor actor.

`RayExecutor` forwards each executor call to its actor (`executor_actor.ExecutorActor`, which
hosts the single-device engine on its device) and replays the host calls the actor collected
(turn begins, metric rows, progress, reports) on the controller, in order, when the call
returns. A turn can be started and finished separately (`start_turn` / `finish_turn`), so that
several executors train at once (`parallel_rounds`); `take_turn` is the two in one.

What travels: a sweep's inputs once per executor (`fit_inputs`: the datasets and the user's
`create_model`, never a loaded model: an actor must be able to rebuild its base model; ray#53727),
a run's `RunOrder` with its chunk checkpoint as file bytes (read from the experiment's folder,
which only the controller writes), a finished run's adapter folder back as bytes, written into
the run's folder here. So the executors' nodes need no shared storage.

Faults: the actor is never restarted by Ray and no call is retried (`max_restarts=0`,
`max_task_retries=0`: a call that killed the process would run again, and a turn is not safe to
repeat). A call to a dead actor raises `ExecutorLost`; the controller continues its runs
elsewhere from their last chunk checkpoints (`RunController.executor_lost`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from rapidfire_core.cluster.executor_actor import ExecutorActor, fit_inputs
from rapidfire_core.cluster.ray_runtime import ExecutorShape, require_ray
from rapidfire_core.scheduler.executor import (
    ExecutorHost,
    ExecutorStats,
    Placement,
    RunOrder,
    RunOutcome,
    RunReport,
)
from rapidfire_core.scheduler.run_checkpoint import RunCheckpoint

CALL_TIMEOUT_S = 600.0  # a control call (place, capture, remove) that takes longer: a hung executor


class ExecutorLost(RuntimeError):
    """An executor's process or node is gone; its runs continue elsewhere from their checkpoints."""

    def __init__(self, executor: RayExecutor, cause: BaseException) -> None:
        super().__init__(f"{executor.name} was lost: {type(cause).__name__}")
        self.executor = executor


@dataclasses.dataclass
class RemoteTaker:
    """A turn taker on an executor actor (a run, or a fused cohort's members)."""

    run_id: int  # its smallest run id
    chunks_done: int  # its members' least
    members: list[int]
    executor: RayExecutor


class RayExecutor:
    """One executor actor (module docstring); implements `scheduler.executor.Executor`."""

    def __init__(self, index: int, shape: ExecutorShape) -> None:
        ray = require_ray()
        remote = ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=4)(ExecutorActor)
        self.index = index
        threads = None if shape.gpu else shape.threads
        self.actor = remote.options(**shape.actor_options()).remote(index, threads)
        self.where: dict[str, Any] = self._get(self.actor.where.remote())
        self.name = f"ray:{self.where['node']}/{self.where['device']}#{index}"
        self.stats = ExecutorStats()
        self.alive = True
        self.busy_seconds = 0.0  # training time, as the actor measured it
        self.started = time.monotonic()
        self.checkpoint_bytes_sent = 0  # chunk checkpoints sent to place runs here (moves, losses)
        self._host: ExecutorHost | None = None
        self._held: set[int] = set()
        self._outputs: dict[int, Path] = {}
        self._fits: dict[int, Any] = {}  # id(FitData) -> its key; the FitData kept alive meanwhile
        self._pause_number = 0

    # ---- calls ---------------------------------------------------------------------------------
    def _get(self, ref: Any, timeout: float | None = CALL_TIMEOUT_S) -> Any:
        ray = require_ray()
        try:
            return ray.get(ref, timeout=timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            self.alive = False
            raise ExecutorLost(self, exc) from exc

    def _call(self, method: str, *args: Any) -> Any:
        if not self.alive:
            raise ExecutorLost(self, RuntimeError("dead"))
        return self._get(self.actor.call.remote(method, *args))

    # ---- the Executor protocol ------------------------------------------------------------------
    def connect(self, host: ExecutorHost) -> None:
        self._host = host

    def start_fit(self, state_budget: int | None = None) -> None:
        self._get(self.actor.start_fit.remote(state_budget))

    def end_fit(self) -> None:
        if self.alive:
            self._get(self.actor.end_fit.remote())

    def place(self, order: RunOrder) -> Placement:
        key = self._fit_key(order.fit)
        files = folder = None
        if order.resume_from is not None:
            path = Path(order.resume_from.path)
            files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
            folder = path.name
            self.checkpoint_bytes_sent += sum(len(content) for content in files.values())
        sent = dataclasses.replace(order, fit=None, output_dir=None, resume_from=None)
        answer = self._get(self.actor.place.remote(sent, key, files, folder))
        if answer[0] == "error":
            raise RuntimeError(answer[1])
        placement, warm_report = answer
        if warm_report is not None:
            order.warm_start.report = warm_report  # what the clone got of its parent (the command says)
        self._held.add(order.run_id)
        self._outputs[order.run_id] = order.output_dir
        return placement

    def _fit_key(self, fit: Any) -> int:
        key = id(fit)
        if key not in self._fits:
            self._get(self.actor.add_fit.remote(key, fit_inputs(fit)))
            self._fits[key] = fit
        return key

    @property
    def held(self) -> frozenset[int]:
        """The ids of the runs placed here."""
        return frozenset(self._held)

    def holds(self, run_id: int) -> bool:
        return run_id in self._held

    def turn_takers(self, run_ids: Any) -> list[RemoteTaker]:
        ids = [i for i in run_ids if i in self._held]
        answer = self._get(self.actor.turn_takers.remote(ids, self._in_flight()))
        return [RemoteTaker(run_id, done, members, self) for run_id, done, members in answer]

    def members(self, taker: RemoteTaker) -> list[int]:
        return list(taker.members)

    def take_turn(self, taker: RemoteTaker, upcoming: Any = ()) -> bool:
        return self.finish_turn(self.start_turn(taker))

    def start_turn(self, taker: RemoteTaker) -> Any:
        """The taker's turn begins on the actor; `finish_turn(ref)` ends it."""
        return self.actor.take_turn.remote(taker.run_id, self._in_flight(), self._pause_number)

    def finish_turn(self, ref: Any) -> bool:
        """Wait for the turn `ref` and replay its host calls on the controller; True: it paused
        at an optimizer-step boundary for commands (take the turn again once they are applied)."""
        answer = self._get(ref, timeout=None)
        for run_id, (kind, files) in answer["results"].items():
            self._write_result(run_id, kind, files)
        for call in answer["calls"]:
            self._replay(call)
        fused, batched, computed, served = answer["counters"]
        self.stats.fused_steps += fused
        self.stats.batched_generations += batched
        self.stats.reference_sequences[0] += computed
        self.stats.reference_sequences[1] += served
        self.busy_seconds = answer["busy_seconds"]
        self.last_turn_seconds = answer["seconds"]
        return answer["paused"]

    def drain_turn(self) -> None:
        """Replay what the turn in flight has logged so far (metric rows, progress) on the controller."""
        for call in self._get(self.actor.drain.remote()):
            self._replay(call)

    def request_pause(self) -> None:
        """The runs training now pause at their next optimizer step (commands wait)."""
        self._pause_number += 1
        if self.alive:
            self.actor.request_pause.remote(self._pause_number)

    def _in_flight(self) -> list[int]:
        return [i for i in self._held if self._host.in_flight(i)]

    def _write_result(self, run_id: int, kind: str, files: dict[str, bytes]) -> None:
        out = self._outputs[run_id] / kind
        for name, content in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(content)

    def _replay(self, call: tuple) -> None:
        host, name = self._host, call[0]
        if name == "turn_begins":
            host.turn_begins(call[1], fused=call[2], joining=call[3])
        elif name == "record":
            host.record(*call[1:])
        elif name == "progress":
            host.on_progress(call[1])
        elif name == "note":
            host.note(call[1])
        else:
            report: RunReport = call[1]
            if report.outcome is RunOutcome.FAILED:
                self._held.discard(report.run_id)
            host.report(report)

    def progress(self, run_id: int) -> Any:
        return self._call("progress", run_id)

    def capture(self, run_id: int) -> RunCheckpoint | None:
        return self._call("capture", run_id)

    def park(self, run_id: int) -> None:
        self._call("park", run_id)

    def unpark(self, run_id: int) -> None:
        self._call("unpark", run_id)

    def warm_start_from(self, run_id: int) -> tuple[Any, int]:
        return self._call("warm_start_from", run_id)

    def remove(self, run_id: int) -> None:
        self._held.discard(run_id)
        if self.alive:
            self._call("remove", run_id)

    def interrupt(self) -> dict[int, int]:
        self._held.clear()
        if not self.alive:
            return {}
        try:
            return self._call("interrupt")
        except ExecutorLost:
            return {}

    def close(self) -> None:
        """End the executor's process (its runs' state is in the chunk checkpoints)."""
        ray = require_ray()
        self._held.clear()
        if self.alive:
            try:
                self._call("close")
            except ExecutorLost:
                pass
            ray.kill(self.actor, no_restart=True)
            self.alive = False


__all__ = ["ExecutorLost", "RayExecutor", "RemoteTaker"]
