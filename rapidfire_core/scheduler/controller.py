"""The run controller: owns one experiment's runs while this process trains it.

It is the one place where a run's life is decided (the user's process owns the experiment):

- the owner lease (`control.owner_lease`): taken once per fit (`take_ownership`), released once;
  taking it treats runs a dead owner left in flight as interrupted;
- registering a run (`add_runs`, clones, `restore_runs`): store row, tracking run, then
  *placement*: the run is handed to an executor (`scheduler.executor`) by id, with how to build
  it (`RunOrder`); today one in-process executor (`scheduler.local_executor.LocalExecutor`);
- status changes: one setter (`RunLifecycle.set`, `scheduler.run_lifecycle`), one table
  (`control.run_status`), the tracking status derived there;
- applying commands (IC Ops, `control.command_store`) in order, each once: between turns, and
  inside a turn when the executor's runs stand at an optimizer step (`apply_commands`);
- the round loop's view (`turn_takers`, `wants_turn`, `take_turn`: `scheduler.loop`);
- the executors' reports (`report`): chunk checkpoints written (`CheckpointWriter`), completion,
  failure (one run's error never stops the others), and the progress display.

Ops and their exact meaning (each takes effect at the affected run's next optimizer-step
boundary; the other runs are not disturbed: a paused run's process state is restored exactly
when it gets its next turn):

    stop    NEW/ONGOING -> STOPPED. The run parks where it is (its thread paused, all state
            kept; with a device budget its state is evicted to the host pool). MLflow: KILLED.
    resume  STOPPED -> ONGOING. It continues exactly where it stopped. MLflow: RUNNING again.
    delete  any -> DELETED. Its thread ends, its adapter and pooled state are freed, its MLflow
            run ends (KILLED) and is deleted; its rows stay in the run store.
    clone   a new run from the parent's config with `changes` (validated as run_fit validates;
            a bad edit fails the command, nothing else changes) and the parent's functions.
            Cold: trains from scratch from the start of the chunk order. Warm (`warm_start`):
            starts from the parent's adapter (and Adam moments, see `trainers.warm_start`) as
            they are when the command is applied, at the parent's position in the data, with
            its own hyperparameters (its learning-rate schedule starts at its own step 0).

A command on a run in a status where it makes no sense fails with the reason; so does one on
a run this process does not hold (trained by another, ended process).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rapidfire_core import layout
from rapidfire_core.automl.edit import edit_spec
from rapidfire_core.control import Command, CommandStore, RunStatus, RunStore
from rapidfire_core.control.checkpoints import DEFAULT_KEEP, CheckpointStore
from rapidfire_core.control.faults import fault_point
from rapidfire_core.control.orphans import settle_orphans
from rapidfire_core.control.owner_lease import OwnerLease
from rapidfire_core.control.run_status import IN_FLIGHT
from rapidfire_core.control.unwritable import unwritable_cause
from rapidfire_core.errors import ConfigError
from rapidfire_core.scheduler.checkpoint_writer import CheckpointWriter
from rapidfire_core.scheduler.executor import (
    CannotWarmStart,
    Executor,
    FitCancelled,
    Placement,
    RunOrder,
    RunOutcome,
    RunProgress,
    RunReport,
)
from rapidfire_core.scheduler.interrupts import sigint_deferred
from rapidfire_core.scheduler.local_executor import LocalExecutor
from rapidfire_core.scheduler.loop import LoopHooks, run_rounds
from rapidfire_core.scheduler.progress import ProgressDisplay
from rapidfire_core.scheduler.resume import ResumePlan, run_fingerprint
from rapidfire_core.scheduler.run import FitData
from rapidfire_core.scheduler.run_checkpoint import RunCheckpoint
from rapidfire_core.scheduler.run_lifecycle import RunLifecycle
from rapidfire_core.tracking.metric_buffer import MetricBuffer
from rapidfire_core.tracking.mlflow_tracker import MLflowTracker
from rapidfire_core.trainers.warm_start import WarmStart

# How often a running run looks for commands written by other processes (CLI, dashboard).
# Commands submitted in this process are seen at the very next step.
COMMAND_POLL_SECONDS = 0.5


class CommandRejected(Exception):
    """A command that makes no sense for its run now; the message is the reason."""


Placer = Callable[[Sequence[Executor], Any], Executor]
"""placer(executors, spec) -> the executor a new run is placed on."""


def first_executor(executors: Sequence[Executor], spec: Any) -> Executor:
    """The placement of one device: every run on the first (only) executor."""
    return executors[0]


class RunController:
    def __init__(
        self,
        path: Path,
        store: RunStore,
        commands: CommandStore,
        tracker: MLflowTracker,
        say: Callable[[str], None],
        executors: Sequence[Executor] | None = None,
        placer: Placer = first_executor,
    ) -> None:
        """path: the experiment's folder (`layout`). executors: where runs train (default one
        in-process `LocalExecutor`); placer picks the executor of each new run."""
        self.path = path
        self.store = store
        self.commands = commands
        self.tracker = tracker
        self.say = say
        self.buffer = MetricBuffer(store, tracker)
        self.lifecycle = RunLifecycle(store, tracker)
        self.hooks = LoopHooks()
        self.progress = ProgressDisplay([], enabled=False)
        self.executors: list[Executor] = list(executors) if executors else [LocalExecutor()]
        self.placer = placer
        # The chunk-round loop: `scheduler.loop.run_rounds` (turns one after another); several
        # executors training at once use `cluster.parallel_rounds`.
        self.round_loop: Callable[[RunController, LoopHooks], None] = run_rounds
        for executor in self.executors:
            executor.connect(self)
        self._placed: dict[int, Executor] = {}  # run id -> the executor that holds it
        self._unplaced: dict[int, RunOrder] = {}  # registered by register_runs, placed by add_runs
        self._placements: dict[int, Placement] = {}
        self._orders: dict[int, RunOrder] = {}  # how each run was placed (a move places it again)
        self._taken_by: dict[int, Executor] = {}  # id(taker) -> its executor, for the current round
        self._specs: dict[int, tuple[Any, FitData]] = {}  # every run made here: clones need them
        self.lease = OwnerLease(commands)
        self.sweep = 1  # the sweep (run_fit) new runs belong to: `start_sweep` / `restore_runs`
        self.checkpoint_keep = DEFAULT_KEEP
        # Time persisting on the training path (flush; the host copy is the executors') and in the
        # background writer (files, fsyncs, rename): benchmarks/bench_checkpoint_cost.py.
        self._flush_seconds = 0.0
        self.write_seconds = 0.0
        self.checkpoints_written = 0
        self._writer = CheckpointWriter()
        self._last_poll = 0.0
        self._cancel = threading.Event()

    # ---- ownership -------------------------------------------------------------------------------
    def take_ownership(self) -> None:
        """Take the experiment's owner lease (ExperimentBusy if another live process trains it)
        and treat the runs a dead owner left in flight as interrupted. `give_up_ownership` ends it."""
        self.lease.acquire()
        try:
            self.reconcile_dead_owner()
        except BaseException:
            self.lease.release()
            raise

    def give_up_ownership(self) -> None:
        self.lease.release()

    def reconcile_dead_owner(self) -> None:
        """What a dead owner left (`control.orphans`) is settled: its runs in flight become
        STOPPED and interrupted, in runs.db and their tracking runs (KILLED). The lease holder
        calls this (the runs it trains are kept)."""
        keep = frozenset(self._placed)
        _, orphans = self.commands.unless_owned(lambda db: settle_orphans(db, keep), holder=True)
        self.end_orphaned_tracking(orphans or [])

    def end_orphaned_tracking(self, orphans: Sequence[int]) -> None:
        """The tracking runs of `orphans` (runs a dead owner left in flight, now STOPPED) end KILLED."""
        if not orphans:
            return
        left = list(orphans)
        self.say(f"Runs {left} were left in flight by an earlier process; marked STOPPED (resumable)")
        for run_id in orphans:
            self.lifecycle.settle_tracking(self.store.get_run(run_id)["mlflow_run_id"], RunStatus.STOPPED)
        self.tracker.flush()

    # ---- registering and placing runs -----------------------------------------------------------
    def take_runs(
        self,
        specs: Sequence[Any],
        data: FitData,
        plan: ResumePlan | None,
        progress: ProgressDisplay,
        registered: Sequence[int] | None = None,
    ) -> list[int]:
        """A fit's runs handed over by `Experiment.run_fit`: the stored sweep `plan` continued
        (`restore_runs`), or a new sweep of `specs` (`registered`: their ids, if `register_runs`
        already stored them). `progress` shows what happens from now on. Returns the sweep's run ids."""
        self.progress = progress
        if plan is not None:
            return self.restore_runs(plan, data)
        return self.add_runs(specs, data, registered)

    def start_sweep(self) -> None:
        """New runs of this fit belong to a new sweep (the next `run_fit` number)."""
        self.sweep = self.store.next_sweep()

    def register_runs(self, specs: Sequence[Any], data: FitData) -> list[int]:
        """A new sweep's runs in the store, one per spec, in order, all at once: NEW, or FAILED with
        the reason when the spec is invalid (`RunSpec.error`, from `expand(strict=False)`). So
        every run is visible from the moment `run_fit` returns, even with `background=True`."""
        self.start_sweep()
        return [self._register(spec, data) for spec in specs]

    def add_runs(
        self, specs: Sequence[Any], data: FitData, registered: Sequence[int] | None = None
    ) -> list[int]:
        """Register (unless `registered` holds their ids) and place one run per spec (in order); a
        run that fails to build is FAILED."""
        run_ids = list(registered) if registered is not None else self.register_runs(specs, data)
        for run_id in run_ids:
            self._place_registered(run_id)
        return run_ids

    def _place_registered(self, run_id: int) -> None:
        """Place a run `_register` stored (an invalid spec's run is FAILED already: nothing to do)."""
        order = self._unplaced.pop(run_id, None)
        if order is not None:
            self._place(order)

    def _add(
        self,
        spec: Any,
        data: FitData,
        parent_run_id: int | None = None,
        warm: WarmStart | None = None,
        start_position: int = 0,
    ) -> int:
        run_id = self._register(spec, data, parent_run_id, warm, start_position)
        self._place_registered(run_id)
        return run_id

    def _register(
        self,
        spec: Any,
        data: FitData,
        parent_run_id: int | None = None,
        warm: WarmStart | None = None,
        start_position: int = 0,
    ) -> int:
        """The run in the store and its tracking run started (NEW), its order kept in `_unplaced`
        for `_place`; an invalid spec's run is FAILED at once, with the reason."""
        run_id = self.store.create_run(
            "run",
            spec.trainer_type,
            dict(spec.knobs),
            parent_run_id,
            warm is not None,
            fingerprint=run_fingerprint(spec, data),
            sweep=self._sweep_of(parent_run_id),
        )
        name = f"run-{run_id}"
        tags = {"rapidfire.run_id": str(run_id)}
        params: dict[str, Any] = {"trainer_type": spec.trainer_type}  # the knobs follow once built
        if parent_run_id is not None:
            tags |= {
                "rapidfire.parent_run_id": str(parent_run_id),
                "rapidfire.warm_start": str(warm is not None),
            }
            params |= {"parent_run_id": parent_run_id, "warm_start": warm is not None}
        mlflow_id = self.tracker.start_run(name, params, tags=tags)
        self.store.update_run(run_id, name=name, mlflow_run_id=mlflow_id)
        self.lifecycle.register(run_id, RunStatus.NEW)
        self._specs[run_id] = (spec, data)  # a clone of an invalid run may correct it
        if getattr(spec, "error", None):  # invalid: it fails alone, before anything trains
            self.tracker.log_params(mlflow_id, dict(spec.knobs))  # never built: only what was typed
            self._fail(run_id, f"{ConfigError.__name__}: {spec.error}", None)
            return run_id
        self._unplaced[run_id] = RunOrder(
            run_id, name, mlflow_id, spec, data, layout.run_dir(self.path, run_id), start_position, warm
        )
        return run_id

    def _place(self, order: RunOrder, executor: Executor | None = None) -> Placement | None:
        """Place a registered run (None: it failed to build, and is FAILED)."""
        run_id = order.run_id
        self.buffer.register(run_id, order.mlflow_run_id)
        self._specs[run_id] = (order.spec, order.fit)
        executor = executor or self.placer(self.executors, order.spec)
        try:
            placement = executor.place(order)
        except Exception as exc:  # noqa: BLE001 - one bad run must not stop the others
            self.tracker.log_params(order.mlflow_run_id, dict(order.spec.knobs))  # never built: as typed
            self._fail(run_id, f"{type(exc).__name__}: {exc}", _traceback())
            return None
        except BaseException:  # interrupted while building: leave no NEW run or RUNNING MLflow run
            self.lifecycle.set(run_id, RunStatus.STOPPED, error="run_fit was interrupted", interrupted=1)
            raise
        self.tracker.log_params(order.mlflow_run_id, placement.params)
        self._orders[run_id] = order
        self._placed[run_id] = executor
        self._placements[run_id] = placement
        return placement

    def _sweep_of(self, parent_run_id: int | None) -> int:
        if parent_run_id is not None:
            return int(self.store.get_run(parent_run_id)["sweep"])
        return self.sweep

    def _executor(self, run_id: int) -> Executor | None:
        """The executor holding the run (None: not placed here, or let go)."""
        executor = self._placed.get(run_id)
        if executor is not None and not executor.holds(run_id):
            del self._placed[run_id]
            return None
        return executor

    # ---- durability (see scheduler.resume and scheduler.run_checkpoint) -------------------------
    def _persist(self, run_id: int, state: RunCheckpoint | None) -> bool:
        """Write `state` (a run's state captured at a chunk end or a stop) as its chunk checkpoint,
        by the background writer; MLflow then sees the steps it covers. A disk that refused this
        run's previous write (full, read-only) fails the run now with the reason (False); the
        store and the other runs are untouched."""
        if not self._fail_on_write_error(run_id):
            return False
        if state is None:
            return True  # nothing trained since it was placed (or from its checkpoint)
        began = time.perf_counter()
        self.buffer.flush()
        store = CheckpointStore(layout.run_checkpoints_dir(self.path, run_id), self.checkpoint_keep)
        step = state.global_step

        def write() -> None:
            wrote = time.perf_counter()
            state.write(store)
            self.write_seconds += time.perf_counter() - wrote
            fault_point("after_checkpoint")

        self._writer.submit(run_id, write, then=lambda: self.buffer.release(run_id, step))
        self._flush_seconds += time.perf_counter() - began
        self.checkpoints_written += 1
        return True

    def checkpoint(self, run_id: int) -> bool:
        """Capture a paused run's state now (it stands at an optimizer-step boundary: a stop) and
        persist it (`_persist`)."""
        if not self._fail_on_write_error(run_id):
            return False
        executor = self._executor(run_id)
        return self._persist(run_id, executor.capture(run_id) if executor is not None else None)

    def _fail_on_write_error(self, run_id: int) -> bool:
        error = self._writer.take_error(run_id)
        if error is None:
            return True
        if self.lifecycle.status(run_id) in (*IN_FLIGHT, RunStatus.STOPPED):
            self._fail(run_id, f"{type(error).__name__}: {error}", None)
        return False

    def _settle_checkpoints(self) -> None:
        """Wait for queued checkpoint writes; a run whose write failed fails now."""
        self._writer.drain()
        for run_id in list(self._placed):
            self._fail_on_write_error(run_id)

    def restore_runs(self, plan: ResumePlan, data: FitData) -> list[int]:
        """Take back the runs of a stored sweep (`scheduler.resume`): finished ones are only
        registered (clones need their configs); the others are placed again and continue from
        their last checkpoint (from the start without one). Interrupted and NEW runs train on;
        runs STOPPED by a command stay parked, resumable. Returns the sweep's run ids."""
        self.sweep = plan.sweep
        ids = []
        for spec, rec in plan.runs(self.commands):
            ids.append(rec["run_id"])
            self._restore(spec, rec, data)
        return ids

    def _restore(self, spec: Any, rec: dict[str, Any], data: FitData) -> None:
        run_id, status = rec["run_id"], RunStatus(rec["status"])
        self._specs[run_id] = (spec, data)
        self.lifecycle.register(run_id, status)
        if status in (RunStatus.COMPLETED, RunStatus.FAILED):
            self._settle_ended_mlflow_run(rec, status)
            return
        if status not in (RunStatus.NEW, RunStatus.ONGOING, RunStatus.STOPPED):
            return  # DELETED
        info = CheckpointStore(layout.run_checkpoints_dir(self.path, run_id), self.checkpoint_keep).latest()
        if info is None and rec["warm_start"]:
            self.lifecycle.set(
                run_id,
                RunStatus.FAILED,
                error="interrupted before its first checkpoint: its warm start cannot be rebuilt",
            )
            return
        through = info.global_step if info is not None else 0
        mlflow_id = self._rewind_metrics(run_id, rec["mlflow_run_id"], info)
        parked = status is RunStatus.STOPPED and not rec["interrupted"]
        order = RunOrder(
            run_id,
            rec["name"],
            mlflow_id,
            spec,
            data,
            layout.run_dir(self.path, run_id),
            resume_from=info,
            parked=parked,
        )
        placement = self._place(order)
        if placement is None:
            return
        if not parked:
            self.lifecycle.set(
                run_id,
                RunStatus.ONGOING,
                error=None,
                interrupted=0,
                chunks_done=placement.chunks_done,
                global_step=placement.global_step,
            )
        else:
            self.lifecycle.settle_tracking(mlflow_id, RunStatus.STOPPED)  # died before MLflow heard
        where = (
            f"from its checkpoint at step {through} (chunk {placement.chunks_done})"
            if info is not None
            else "from the start"
        )
        self.progress.note(f"run {run_id} {'stays STOPPED, resumable' if parked else 'continues'} {where}")

    def _rewind_metrics(self, run_id: int, mlflow_id: str, info: Any) -> str:
        """What the run logged after its checkpoint `info` (None: from the start) is trained again:
        out of the store; MLflow made to hold exactly the store's durable steps (it may lack some,
        or hold a torn checkpoint's). Returns its tracking run id (recorded if it changed)."""
        through = info.global_step if info is not None else 0
        self.store.rollback_metrics(run_id, through)
        synced = self.tracker.sync_metrics(mlflow_id, self.store.metric_steps(run_id), through)
        if synced != mlflow_id:
            self.store.update_run(run_id, mlflow_run_id=synced)
        return synced

    def _settle_ended_mlflow_run(self, rec: dict[str, Any], status: RunStatus) -> None:
        """A run that ended in the store whose process died before MLflow heard of it (its last
        metrics and its end were still queued): MLflow gets them now."""
        mlflow_id = rec["mlflow_run_id"]
        if not mlflow_id or self.tracker.run_status(mlflow_id) != "RUNNING":
            return
        steps = self.store.metric_steps(rec["run_id"])
        self.tracker.sync_metrics(mlflow_id, steps, max((step for step, _ in steps), default=0))
        self.lifecycle.settle_tracking(mlflow_id, status)

    # ---- moves (several executors: `cluster.parallel_rounds`) ------------------------------------
    def move(self, run_id: int, to: Executor, lost: bool = False) -> Placement | None:
        """The run (at a chunk boundary, or lost with its executor: `lost`) continues on `to` from
        its last chunk checkpoint, exactly (crash-resume's path); without one, from how it was first
        placed. What a lost run logged after that checkpoint is trained again: it leaves the stores.
        None: it failed to build there (it is FAILED)."""
        self._writer.drain()  # its latest checkpoint is on disk
        self._fail_on_write_error(run_id)
        old = self._placed.pop(run_id, None)
        if old is not None and not lost:
            old.remove(run_id)
        info = CheckpointStore(layout.run_checkpoints_dir(self.path, run_id), self.checkpoint_keep).latest()
        status = self.lifecycle.status(run_id)
        if lost:
            self.buffer.flush()
            self.buffer.discard(run_id)
            self._rewind_metrics(run_id, self.store.get_run(run_id)["mlflow_run_id"], info)
        order = self._orders[run_id]
        if info is not None:
            order = dataclasses.replace(order, resume_from=info, warm_start=None)
        return self._place(dataclasses.replace(order, parked=status is RunStatus.STOPPED), to)

    def executor_lost(self, executor: Executor) -> None:
        """`executor` is gone (its process killed, its node lost): its runs continue on the others
        (`placer`) from their last chunk checkpoints; one whose warm start cannot be rebuilt FAILs."""
        self.executors.remove(executor)
        if not self.executors:
            raise RuntimeError(f"every executor was lost (the last: {executor.name})")
        self.progress.note(f"{executor.name} was lost; its runs continue on the others from checkpoints")
        for run_id in [i for i, e in self._placed.items() if e is executor]:
            order = self._orders[run_id]
            if self.lifecycle.status(run_id) not in (*IN_FLIGHT, RunStatus.STOPPED):
                self._placed.pop(run_id)
                continue
            chunks = CheckpointStore(layout.run_checkpoints_dir(self.path, run_id)).latest()
            if chunks is None and order.warm_start is not None:
                self._placed.pop(run_id)
                gone = "its executor was lost before its first checkpoint: its warm start is gone"
                self._fail(run_id, gone, None)
                continue
            self.move(run_id, self.placer(self.executors, order.spec), lost=True)

    def execution_summary(self, run_ids: Sequence[int]) -> list[str]:
        """How the runs `run_ids` will train: which fuse, and why the others are time-sliced."""
        placements = [self._placements[i] for i in run_ids if self._executor(i) is not None]
        fused = [p.run_id for p in placements if p.cohort_key is not None]
        lines = []
        if len(fused) > 1:
            lines.append(f"Runs {fused} train fused: one forward and backward per step for all of them")
        for placement in placements:
            if placement.cohort_key is None and len(placements) > 1:
                lines.append(f"Run {placement.run_id} trains time-sliced: {placement.unfused_reason}")
        return lines

    @property
    def made(self) -> set[int]:
        """Ids of every run this controller created or took back (any status)."""
        return set(self._specs)

    @property
    def runs(self) -> dict[int, Any]:
        """The runs built in this process (the in-process executors' `scheduler.run.Run`s), by id."""
        built: dict[int, Any] = {}
        for executor in self.executors:
            built |= getattr(executor, "runs", {})
        return built

    @property
    def persist_seconds(self) -> float:
        """Seconds spent persisting run state on the training path: host copies and flushes."""
        return self._flush_seconds + sum(e.stats.capture_seconds for e in self.executors)

    @property
    def fused_steps(self) -> int:
        """Forwards that fused 2+ runs' calls, over every executor."""
        return sum(e.stats.fused_steps for e in self.executors)

    @property
    def batched_generations(self) -> int:
        """GRPO generates that batched 2+ runs' prompts, over every executor."""
        return sum(e.stats.batched_generations for e in self.executors)

    @property
    def reference_sequences(self) -> list[int]:
        """DPO reference log-probs of fused cohorts: [sequences computed, sequences served]."""
        return [sum(e.stats.reference_sequences[i] for e in self.executors) for i in (0, 1)]

    # ---- the executors' host (scheduler.executor.ExecutorHost) --------------------------------
    def in_flight(self, run_id: int) -> bool:
        return self.lifecycle.status(run_id) in IN_FLIGHT

    def turn_begins(self, runs: Sequence[RunProgress], fused: bool = False, joining: bool = False) -> None:
        for run in runs:
            self.lifecycle.set(run.run_id, RunStatus.ONGOING)
        if not joining:
            self.progress.begin_turn(runs[0], fused=[run.run_id for run in runs] if fused else None)

    def record(
        self, run_id: int, step: int, epoch: float | None, chunk: int, metrics: dict[str, float]
    ) -> None:
        self.buffer.record(run_id, step, epoch, chunk, metrics)

    def on_progress(self, run: RunProgress) -> None:
        self.progress_step(run)

    def progress_step(self, run: RunProgress) -> None:
        self.progress.step(run)

    def note(self, text: str) -> None:
        self.progress.note(text)

    def should_pause(self) -> bool:
        """Asked at every optimizer-step start of the running run (no I/O most of the time)."""
        if self._cancel.is_set() or self.commands.submitted.is_set():
            return True
        now = time.monotonic()
        if now - self._last_poll < COMMAND_POLL_SECONDS:
            return False
        self._last_poll = now
        return self.commands.has_pending()

    def report(self, report: RunReport) -> None:
        """Apply an executor's report of a run's turn end (`scheduler.executor.RunReport`)."""
        self.buffer.flush()
        run_id = report.run_id
        if report.outcome is RunOutcome.FAILED:
            self._fail(run_id, report.error, report.traceback, report.global_step)
            return
        if report.outcome is RunOutcome.FINISHED:
            self.buffer.release_all(run_id)
            self.lifecycle.set(
                run_id, RunStatus.COMPLETED, chunks_done=report.chunks_done, global_step=report.global_step
            )
            fault_point("after_completion")
            self.progress.end_turn(report.run, RunStatus.COMPLETED.value)
            return
        status = self.lifecycle.status(run_id)
        if status is not RunStatus.DELETED:
            if status is RunStatus.ONGOING and not self._persist(run_id, report.state):
                return  # it failed persisting its state
            self.store.update_run(run_id, chunks_done=report.chunks_done, global_step=report.global_step)
        self.progress.end_turn(report.run, status.value)

    # ---- running -----------------------------------------------------------------------------------
    def run(
        self,
        state_budget: int | None,
        progress: ProgressDisplay,
        policy: Any = None,
        run_ids: Sequence[int] = (),
    ) -> None:
        """Train until no run is NEW or ONGOING (STOPPED runs stay parked for a later resume).
        The caller holds the owner lease (`take_ownership`). state_budget: device bytes for the
        runs' trainable state (`memory.residency`; None: all of it stays on the device).
        policy: an automatic search (`automl.policy`) over `run_ids`: it decides at round ends
        (stop / clone commands), for this fit."""
        if not self.lease.held:
            raise RuntimeError("the run controller trains only while it holds the owner lease")
        self.progress = progress
        self._cancel.clear()
        if policy is not None:
            policy.start(list(run_ids))
            self.hooks.round_end.append(policy.round_end)
        lost = None  # the run store refused a write (control.unwritable): nothing more is recorded
        try:
            for executor in self.executors:
                executor.start_fit(state_budget)
            self.round_loop(self, self.hooks)
        except BaseException as exc:  # KeyboardInterrupt and cancel included: leave no run thread running
            lost = unwritable_cause(exc)
            self.interrupt("run_fit was interrupted", record=lost is None)
            if lost is not None:
                raise lost.training_stopped() from None
            raise
        finally:
            if lost is None:
                self._settle_checkpoints()
                self.buffer.flush()
                self.tracker.flush()  # the MLflow store is complete when run_fit returns
            for executor in self.executors:
                executor.end_fit()
            if policy is not None:
                self.hooks.round_end.remove(policy.round_end)

    def cancel(self) -> None:
        """Ask a running `run` to stop every unfinished run (from any thread)."""
        self._cancel.set()

    def interrupt(self, reason: str, record: bool = True) -> None:
        """End every run's thread now (KeyboardInterrupt, cancel): runs in flight become STOPPED
        with `reason`; runs stopped by a command stay STOPPED (neither can resume in-process).
        `record=False` (the run store cannot be written): the threads end and nothing is
        written; the store holds each run as of its last checkpoint, so run_fit continues it."""
        # More Ctrl-Cs while this runs are held off: every run must end up consistent.
        with sigint_deferred():
            self._writer.drain()  # checkpoints already taken reach the disk
            for executor in self.executors:
                for run_id, global_step in executor.interrupt().items():
                    self._placed.pop(run_id, None)
                    if not record or not self.in_flight(run_id):
                        continue
                    # It continues from its last checkpoint on the next run_fit: what it logged
                    # after that checkpoint is trained again, so MLflow never gets it.
                    self.buffer.flush()
                    self.buffer.discard(run_id)
                    self.lifecycle.set(
                        run_id, RunStatus.STOPPED, error=reason, global_step=global_step, interrupted=1
                    )
                    self.progress.note(f"run {run_id} STOPPED ({reason}); resumable from its last checkpoint")
            if record:
                self.buffer.flush()
                self.tracker.flush()

    # ---- the round loop's view -------------------------------------------------------------------
    def turn_takers(self) -> list[Any]:
        """Runs that want a turn, grouped by their executors (a fused cohort is one taker)."""
        takers = []
        self._taken_by = {}
        for executor in self.executors:
            for taker in executor.turn_takers(self.runs_on(executor)):
                self._taken_by[id(taker)] = executor
                takers.append(taker)
        return takers

    def runs_on(self, executor: Executor) -> list[int]:
        """The ids of the runs placed on `executor` that are in flight (NEW or ONGOING)."""
        return [i for i, e in self._placed.items() if e is executor and self.in_flight(i)]

    def wants_turn(self, taker: Any) -> bool:
        """True while any run of the taker (a cohort's members may be stopped one by one) is in flight."""
        executor = self._taken_by[id(taker)]
        return any(self.in_flight(i) and executor.holds(i) for i in executor.members(taker))

    def take_turn(self, taker: Any, upcoming: Sequence[Any]) -> None:
        """One turn of `taker` on its executor: each of its due runs trains until it completes a
        chunk or ends; commands arriving meanwhile are applied at its next optimizer step."""
        executor = self._taken_by[id(taker)]
        while executor.take_turn(taker, upcoming):  # it paused for commands without applying them
            self.apply_commands()
            if not self.wants_turn(taker):
                break

    # ---- commands --------------------------------------------------------------------------------
    def apply_commands(self) -> None:
        """Apply every pending command, oldest first, each once (claimed atomically)."""
        if self._cancel.is_set():
            raise FitCancelled("run_fit was cancelled")
        self.commands.submitted.clear()
        self._last_poll = time.monotonic()
        for command in self.commands.pending():
            if not self.commands.claim(command.command_id):
                continue  # another applier took it
            try:
                result = self._apply(command)
            except (CommandRejected, ConfigError) as exc:
                done = self.commands.finish(command.command_id, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - the engine's own failure applying it
                done = self.commands.finish(command.command_id, error=f"{type(exc).__name__}: {exc}")
            else:
                done = self.commands.finish(command.command_id, result=result)
            self._announce(done)

    def _announce(self, command: Command) -> None:
        what = f"command {command.command_id} ({command.op} run {command.run_id}, from {command.source})"
        if command.status == "failed":
            self.progress.note(f"{what} failed: {command.error}")
        elif command.op == "clone":
            self.progress.note(f"{what}: new run {command.new_run_id}")
        else:
            self.progress.note(f"{what}: applied")

    def _apply(self, command: Command) -> dict[str, Any]:
        run_id = command.run_id
        try:
            status = self.store.status(run_id)
        except KeyError:
            raise CommandRejected(f"no run with id {run_id}") from None
        if status is RunStatus.DELETED:
            raise CommandRejected(f"run {run_id} is DELETED")
        op = {"stop": self._stop, "resume": self._resume, "delete": self._delete, "clone": self._clone}
        return op[command.op](run_id, status, **command.payload)

    def _held(self, run_id: int, op: str) -> Executor:
        executor = self._executor(run_id)
        if executor is None:
            raise CommandRejected(
                f"run {run_id} is not held by this process (it was trained by one that has ended; "
                "run_fit with its sweep's arguments takes it back), "
                f"so it cannot be {op}"
            )
        return executor

    def _stop(self, run_id: int, status: RunStatus) -> dict[str, Any]:
        if status not in IN_FLIGHT:
            raise CommandRejected(f"run {run_id} is {status.value}: only a NEW or ONGOING run can be stopped")
        executor = self._held(run_id, "stopped")
        if not self.checkpoint(run_id):
            raise CommandRejected(f"run {run_id} FAILED while persisting its state at the stop")
        run = executor.progress(run_id)
        self.lifecycle.set(
            run_id, RunStatus.STOPPED, chunks_done=run.chunks_done, global_step=run.global_step
        )
        executor.park(run_id)
        return {"status": RunStatus.STOPPED.value, "global_step": run.global_step}

    def _resume(self, run_id: int, status: RunStatus) -> dict[str, Any]:
        if status is not RunStatus.STOPPED:
            raise CommandRejected(f"run {run_id} is {status.value}: only a STOPPED run can be resumed")
        executor = self._held(run_id, "resumed")
        self.lifecycle.set(run_id, RunStatus.ONGOING, error=None)
        executor.unpark(run_id)
        return {"status": RunStatus.ONGOING.value, "global_step": executor.progress(run_id).global_step}

    def _delete(self, run_id: int, status: RunStatus) -> dict[str, Any]:
        executor = self._executor(run_id)
        if executor is not None:
            self.buffer.flush()
            executor.remove(run_id)
            self._placed.pop(run_id, None)
        self.lifecycle.set(run_id, RunStatus.DELETED)
        return {"status": RunStatus.DELETED.value}

    def _clone(self, run_id: int, status: RunStatus, changes: dict, warm_start: bool) -> dict[str, Any]:
        if run_id not in self._specs:
            raise CommandRejected(
                f"run {run_id} was made by another process: its config (with its functions) is not "
                "known here; clone it from a process that has it"
            )
        spec, data = self._specs[run_id]
        new_spec = edit_spec(spec, changes)  # ConfigError names the change and field
        warm, position = None, 0
        if warm_start:
            warm, position = self._capture_warm_start(run_id, status)
        new_id = self._add(new_spec, data, parent_run_id=run_id, warm=warm, start_position=position)
        result: dict[str, Any] = {"run_id": new_id, "warm_start": warm_start}
        if warm is not None:
            report = warm.report
            result |= {"start_position": position, "layers_copied": len(report.copied) + len(report.resized)}
        return result

    def _capture_warm_start(self, run_id: int, status: RunStatus) -> tuple[WarmStart, int]:
        executor = self._executor(run_id)
        if executor is None or status is RunStatus.FAILED:
            raise CommandRejected(f"run {run_id} is {status.value}: its weights are gone, clone it cold")
        try:
            return executor.warm_start_from(run_id)
        except CannotWarmStart as exc:
            raise CommandRejected(str(exc)) from None

    # ---- ends of runs ----------------------------------------------------------------------------
    def _fail(self, run_id: int, reason: str, tb: str | None, global_step: int | None = None) -> None:
        """The run FAILED with `reason` (its executor lets it go); a DELETED run stays DELETED.
        global_step: where it stood (None: where its executor says, if it holds it)."""
        self.buffer.release_all(run_id)
        executor = self._placed.pop(run_id, None)
        if global_step is None and executor is not None and executor.holds(run_id):
            global_step = executor.progress(run_id).global_step
        if self.lifecycle.status(run_id) is not RunStatus.DELETED:
            at = {} if global_step is None else {"global_step": global_step}
            self.lifecycle.set(run_id, RunStatus.FAILED, error=reason, **at)
        if executor is not None and executor.holds(run_id):
            executor.remove(run_id)
        self.progress.note(f"run {run_id} FAILED: {reason}")
        if tb and os.environ.get("RAPIDFIRE_DEBUG"):
            self.progress.note(tb)

    def close(self) -> None:
        """End every parked run's thread (the experiment ends); STOPPED runs stay STOPPED."""
        for executor in self.executors:
            executor.close()
        self._placed.clear()


def _traceback() -> str:
    import traceback

    return traceback.format_exc()


__all__ = ["CommandRejected", "FitCancelled", "RunController", "first_executor"]
