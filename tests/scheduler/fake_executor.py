"""A fake executor and tracker: drive the run controller without training (milliseconds).

`FakeExecutor` implements `rapidfire_core.scheduler.executor.Executor` with scripted runs: each
placed run has `num_chunks` chunks of `steps_per_chunk` optimizer steps (one loss row each); a
turn trains to the end of the run's current chunk, then it finishes after its last; `fail_at[run_id] = chunk` makes a run fail in that chunk. Before every
step it asks the host whether commands wait and lets it apply them, as a real executor does at
an optimizer-step boundary. It records every call the controller makes (`calls`), so a test
can check placement, turns and what a command did to the executor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rapidfire_core.scheduler.executor import (
    CannotWarmStart,
    ExecutorHost,
    ExecutorStats,
    Placement,
    RunOrder,
    RunOutcome,
    RunReport,
)


@dataclass
class FakeRun:
    """A scripted run (the progress display's view of a run too)."""

    run_id: int
    knobs: dict[str, Any]
    num_chunks: int
    steps_per_chunk: int
    chunks_done: int = 0
    global_step: int = 0
    max_steps: int = 0
    latest: dict[str, float] = field(default_factory=dict)
    parked: bool = False

    @property
    def finished(self) -> bool:
        return self.chunks_done >= self.num_chunks


class FakeExecutor:
    def __init__(self, name: str = "fake", num_chunks: int = 2, steps_per_chunk: int = 2) -> None:
        self.name = name
        self.stats = ExecutorStats()
        self.num_chunks = num_chunks
        self.steps_per_chunk = steps_per_chunk
        self.fail_at: dict[int, int] = {}  # run id -> the chunk (1-based) in which it raises
        self.unbuildable: set[int] = set()  # run ids whose place() raises
        self.runs: dict[int, FakeRun] = {}
        self.calls: list[tuple] = []
        self.on_step = None  # on_step(run) after each step: a test's seam (submit a command mid-turn)
        self.returns_for_commands = False  # True: end the turn when commands wait (a remote executor)
        self.cohort = False  # True: every run in flight is one taker (as runs that fuse)
        self._host: ExecutorHost | None = None

    def connect(self, host: ExecutorHost) -> None:
        self._host = host

    def place(self, order: RunOrder) -> Placement:
        self.calls.append(("place", order.run_id, order.parked, order.warm_start is not None))
        if order.run_id in self.unbuildable:
            raise ValueError(f"run {order.run_id} cannot be built")
        run = FakeRun(
            order.run_id,
            dict(order.spec.knobs),
            self.num_chunks,
            self.steps_per_chunk,
            max_steps=self.num_chunks * self.steps_per_chunk,
            parked=order.parked,
        )
        self.runs[run.run_id] = run
        return Placement(run.run_id, self.name, params={"knobs": len(run.knobs)})

    def holds(self, run_id: int) -> bool:
        return run_id in self.runs

    def start_fit(self, state_budget: int | None = None) -> None:
        self.calls.append(("start_fit", state_budget))

    def end_fit(self) -> None:
        self.calls.append(("end_fit",))

    def turn_takers(self, run_ids: Sequence[int]) -> list[FakeRun | FakeCohort]:
        runs = [self.runs[i] for i in sorted(run_ids) if i in self.runs and not self.runs[i].finished]
        return [FakeCohort(runs)] if self.cohort and runs else runs

    def members(self, taker: FakeRun | FakeCohort) -> list[int]:
        return [m.run_id for m in taker.members] if isinstance(taker, FakeCohort) else [taker.run_id]

    def take_turn(self, taker: FakeRun | FakeCohort, upcoming: Sequence[Any]) -> bool:
        if isinstance(taker, FakeCohort):  # each due member in turn (a real cohort fuses their steps)
            due = [m for m in taker.members if m.run_id in self.runs and self._host.in_flight(m.run_id)]
            due = [m for m in due if m.chunks_done == taker.chunks_done]
            self._host.turn_begins(due, fused=True)
            return any([self._train_chunk(run) for run in due])
        self._host.turn_begins([taker])
        return self._train_chunk(taker)

    def _train_chunk(self, run: FakeRun) -> bool:
        host = self._host
        self.calls.append(("turn", run.run_id, run.chunks_done + 1))
        while run.global_step < (run.chunks_done + 1) * run.steps_per_chunk:  # a stopped run goes on
            if host.should_pause():
                if self.returns_for_commands:
                    return True  # the controller applies them, then calls again
                host.apply_commands()
            if run.run_id not in self.runs or not host.in_flight(run.run_id):
                host.report(RunReport(run.run_id, RunOutcome.PAUSED, run, run.chunks_done, run.global_step))
                return False
            if self.fail_at.get(run.run_id) == run.chunks_done + 1:
                del self.runs[run.run_id]
                reason = f"RuntimeError: run {run.run_id} blew up"
                host.report(
                    RunReport(
                        run.run_id, RunOutcome.FAILED, run, run.chunks_done, run.global_step, error=reason
                    )
                )
                return False
            run.global_step += 1
            run.latest = {"loss": 1.0 / run.global_step}
            host.record(run.run_id, run.global_step, None, run.chunks_done + 1, dict(run.latest))
            host.on_progress(run)
            if self.on_step is not None:
                self.on_step(run)
        run.chunks_done += 1
        outcome = RunOutcome.FINISHED if run.finished else RunOutcome.CHUNK
        host.report(RunReport(run.run_id, outcome, run, run.chunks_done, run.global_step))
        return False

    def progress(self, run_id: int) -> FakeRun:
        return self.runs[run_id]

    def capture(self, run_id: int) -> None:
        self.calls.append(("capture", run_id))
        return None  # the controller then writes no checkpoint (nothing a fake trains)

    def park(self, run_id: int) -> None:
        self.calls.append(("park", run_id))
        self.runs[run_id].parked = True

    def unpark(self, run_id: int) -> None:
        self.calls.append(("unpark", run_id))
        self.runs[run_id].parked = False

    def warm_start_from(self, run_id: int) -> tuple[Any, int]:
        self.calls.append(("warm_start_from", run_id))
        if not any(knob.startswith("peft.") for knob in self.runs[run_id].knobs):
            raise CannotWarmStart(f"run {run_id} trains without a LoRA adapter: warm start needs one")
        return _FakeWarmStart(run_id), 0

    def remove(self, run_id: int) -> None:
        self.calls.append(("remove", run_id))
        self.runs.pop(run_id, None)

    def interrupt(self) -> dict[int, int]:
        held = {run_id: run.global_step for run_id, run in self.runs.items()}
        self.runs.clear()
        return held

    def close(self) -> None:
        self.runs.clear()


class FakeCohort:
    """Runs that take their turns together (`turn_takers` with `cohort=True`)."""

    def __init__(self, members: Sequence[FakeRun]) -> None:
        self.members = list(members)
        self.run_id = min(m.run_id for m in self.members)
        self.chunks_done = min(m.chunks_done for m in self.members)


@dataclass
class _FakeWarmStart:
    parent_run_id: int
    report: Any = field(default_factory=lambda: type("Report", (), {"copied": [], "resized": []})())


class FakeTracker:
    """Records what the controller tells its trackers; `status` is each run's MLflow-style status."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.deleted: set[str] = set()
        self.metrics: dict[str, list[int]] = {}
        self.params: dict[str, dict] = {}

    def start_run(self, name: str, params: dict, tags: dict | None = None) -> str:
        self.status[name] = "RUNNING"
        self.params[name] = dict(params)
        return name

    def log_params(self, run_id: str, params: dict) -> None:
        self.params[run_id] |= params

    def log_metric_steps(self, run_id: str, steps: Sequence[tuple[int, dict]]) -> None:
        self.metrics.setdefault(run_id, []).extend(step for step, _ in steps)

    def end_run(self, run_id: str, status: str) -> None:
        self.status[run_id] = status

    def reopen_run(self, run_id: str) -> None:
        self.status[run_id] = "RUNNING"

    def delete_run(self, run_id: str) -> None:
        self.deleted.add(run_id)

    def run_status(self, run_id: str) -> str | None:
        return self.status.get(run_id)

    def sync_metrics(self, run_id: str, steps: Sequence, through: int) -> str:
        return run_id

    def flush(self) -> None:
        pass
