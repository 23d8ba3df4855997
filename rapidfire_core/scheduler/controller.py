"""The run controller: owns the runs of one experiment that this process trains.

It is the one place where a run's life happens:

- building a run (`add_runs`, and clones): store row, MLflow run, then a complete `Run`;
- status transitions, through the store's table of allowed ones (`control.run_status`);
- turn-taking for the round loop (`turn_takers`, `wants_turn`, `take_turn`), with the
  memory pool's hooks (`gpu_state_budget`) around each turn;
- applying commands (IC Ops, `control.command_store`) in order, each once: between turns,
  and inside a turn at the running run's next optimizer step (the run pauses for them);
- completion (adapter saved), failure (one run's error never stops the others), interruption;
- the progress display (its only caller).

Ops and their exact meaning (each takes effect at the affected run's next optimizer-step
boundary; the other runs are not disturbed: a paused run's process state is restored exactly
when it gets its next turn):

    stop    NEW/ONGOING -> STOPPED. The run parks where it is (its thread paused, all state
            kept; with a device budget its state is evicted to the host pool). MLflow: KILLED.
    resume  STOPPED -> ONGOING. It continues exactly where it stopped. MLflow: RUNNING again.
    delete  any -> DELETED. Its thread ends, its adapter and pooled state are freed, its MLflow
            run is deleted; its rows stay in the run store.
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

import gc
import os
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rapidfire_core.automl.edit import edit_spec
from rapidfire_core.control import Command, CommandStore, RunStatus, RunStore
from rapidfire_core.control.checkpoints import (
    DEFAULT_KEEP,
    CheckpointStore,
    run_checkpoint_dir,
)
from rapidfire_core.control.faults import fault_point
from rapidfire_core.control.owner_lease import OwnerLease
from rapidfire_core.control.run_status import IN_FLIGHT
from rapidfire_core.control.unwritable import unwritable_cause
from rapidfire_core.errors import ConfigError
from rapidfire_core.memory.residency import RunResidency
from rapidfire_core.scheduler.checkpoint_writer import CheckpointWriter
from rapidfire_core.scheduler.cohort import Cohort, CohortTurn, ComputeThread, MemberState, plan_cohorts
from rapidfire_core.scheduler.interrupts import sigint_deferred
from rapidfire_core.scheduler.loop import LoopHooks, run_rounds
from rapidfire_core.scheduler.openmp_pool import release_openmp_workers
from rapidfire_core.scheduler.progress import ProgressDisplay
from rapidfire_core.scheduler.resume import ResumePlan, run_fingerprint
from rapidfire_core.scheduler.run import FitData, Run, RunHooks, TurnEnd
from rapidfire_core.scheduler.run_checkpoint import RunResume
from rapidfire_core.scheduler.run_checkpoint import capture as capture_run
from rapidfire_core.tracking.effective_params import spec_params
from rapidfire_core.tracking.metric_buffer import MetricBuffer
from rapidfire_core.tracking.mlflow_tracker import MLflowTracker
from rapidfire_core.trainers.warm_start import WarmStart, capture_parent

# How often a running run looks for commands written by other processes (CLI, dashboard).
# Commands submitted in this process are seen at the very next step.
COMMAND_POLL_SECONDS = 0.5


class CommandRejected(Exception):
    """A command that makes no sense for its run now; the message is the reason."""


class FitCancelled(Exception):
    """`FitHandle.cancel()` was called: unfinished runs stop, as on a KeyboardInterrupt."""


class RunController:
    def __init__(
        self,
        path: Path,
        store: RunStore,
        commands: CommandStore,
        tracker: MLflowTracker,
        say: Callable[[str], None],
    ) -> None:
        self.path = path
        self.store = store
        self.commands = commands
        self.tracker = tracker
        self.say = say
        self.buffer = MetricBuffer(store, tracker)
        self.hooks = LoopHooks()
        self.progress = ProgressDisplay([], enabled=False)
        self.residency: RunResidency | None = None
        self.runs: dict[int, Run] = {}  # built runs this process holds (parked ones included)
        self._status: dict[int, RunStatus] = {}  # mirror of the store for the runs above
        self._specs: dict[int, tuple[Any, FitData]] = {}  # every run made here: clones need them
        self.lease = OwnerLease(commands)
        self.sweep = 1  # the sweep (run_fit) new runs belong to; set by Experiment.run_fit
        self.checkpoint_keep = DEFAULT_KEEP
        # Time persisting on the training path (flush + host copy) and in the background writer
        # (files, fsyncs, rename): benchmarks/bench_checkpoint_cost.py.
        self.persist_seconds = 0.0
        self.write_seconds = 0.0
        self.checkpoints_written = 0
        self._writer = CheckpointWriter()
        self._last_poll = 0.0
        self._cancel = threading.Event()
        self._compute: ComputeThread | None = None  # runs fused forwards/backwards (scheduler.cohort)
        self.fused_steps = 0  # forwards that fused 2+ runs' calls (all cohorts)
        self.batched_generations = 0  # generates that batched 2+ runs' prompts (GRPO cohorts)
        # DPO reference log-probs of fused cohorts: [sequences computed, sequences served]
        self.reference_sequences = [0, 0]

    # ---- building runs -------------------------------------------------------------------------
    def register_runs(self, specs: Sequence[Any], data: FitData) -> list[int]:
        """One run per spec in the store, in order, all at once: NEW, or FAILED with the reason
        when the spec is invalid (`RunSpec.error`, from `expand(strict=False)`)."""
        return [self._register(spec, data) for spec in specs]

    def add_runs(
        self, specs: Sequence[Any], data: FitData, registered: Sequence[int] | None = None
    ) -> list[int]:
        """Register (unless `registered` holds their ids) and build one run per spec (in order);
        a run that fails to build is FAILED."""
        run_ids = list(registered) if registered is not None else self.register_runs(specs, data)
        for run_id, spec in zip(run_ids, specs, strict=True):
            if run_id in self._status:  # an invalid spec's run is FAILED already
                rec = self.store.get_run(run_id)
                self._build(run_id, rec["name"], rec["mlflow_run_id"], spec, data)
        return run_ids

    def _add(
        self,
        spec: Any,
        data: FitData,
        parent_run_id: int | None = None,
        warm: WarmStart | None = None,
        start_position: int = 0,
    ) -> int:
        run_id = self._register(spec, data, parent_run_id, warm)
        if run_id in self._status:
            rec = self.store.get_run(run_id)
            self._build(run_id, rec["name"], rec["mlflow_run_id"], spec, data, start_position, warm)
        return run_id

    def _register(
        self, spec: Any, data: FitData, parent_run_id: int | None = None, warm: WarmStart | None = None
    ) -> int:
        knobs = dict(spec.knobs)
        run_id = self.store.create_run(
            "run",
            spec.trainer_type,
            knobs,
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
        self._status[run_id] = RunStatus.NEW
        self._specs[run_id] = (spec, data)
        if getattr(spec, "error", None):  # invalid: it fails alone, before anything trains
            self.tracker.log_params(mlflow_id, knobs)  # never built: only what was typed
            self._fail_unbuilt(run_id, mlflow_id, data, ConfigError(spec.error), "")
        return run_id

    def _build(
        self,
        run_id: int,
        name: str,
        mlflow_id: str,
        spec: Any,
        data: FitData,
        start_position: int = 0,
        warm: WarmStart | None = None,
    ) -> Run | None:
        """The `Run` of a registered run (None: it failed to build, and is FAILED)."""
        knobs = dict(spec.knobs)
        self.buffer.register(run_id, mlflow_id)
        self._specs[run_id] = (spec, data)
        run_hooks = RunHooks(
            record=self.buffer.record, on_progress=self.progress_step, should_pause=self.should_pause
        )
        try:
            run = Run(
                run_id=run_id,
                name=name,
                spec=spec,
                knobs=knobs,
                mlflow_run_id=mlflow_id,
                data=data,
                hooks=run_hooks,
                output_dir=self.path / "runs" / str(run_id),
                start_position=start_position,
                warm_start=warm,
            )
        except Exception as exc:  # noqa: BLE001 - one bad run must not stop the others
            self.tracker.log_params(mlflow_id, knobs)  # never built: only what was typed
            self._fail_unbuilt(run_id, mlflow_id, data, exc, traceback.format_exc())
            return None
        except BaseException:  # interrupted while building: leave no NEW run or RUNNING MLflow run
            self.store.update_run(
                run_id, status=RunStatus.STOPPED, error="run_fit was interrupted", interrupted=1
            )
            self._status.pop(run_id, None)
            self.tracker.end_run(mlflow_id, "KILLED")
            data.registry.discard_adapter(f"run_{run_id}")
            raise
        # The values the run uses (fp16=False on a CPU, ...), and what was typed where they differ.
        self.tracker.log_params(mlflow_id, spec_params(spec, knobs, run.trainer.args))
        self.runs[run_id] = run
        if self.residency is not None and self._status[run_id] in IN_FLIGHT:
            self.residency.add(run)
        return run

    def _sweep_of(self, parent_run_id: int | None) -> int:
        if parent_run_id is not None:
            return int(self.store.get_run(parent_run_id)["sweep"])
        return self.sweep

    # ---- durability (see scheduler.resume and scheduler.run_checkpoint) -------------------------
    def checkpoint(self, run: Run) -> bool:
        """Persist `run`'s complete training state now, then let MLflow see the steps it covers.
        Called where a run completes a chunk and where it is stopped (a paused run, at an
        optimizer-step boundary). The state is copied to the host here; the files are written
        by the background writer (`scheduler.checkpoint_writer`). A disk that refused this
        run's previous write (full, read-only) fails the run now with the reason (False); the
        store and the other runs are untouched."""
        if not self._fail_on_write_error(run):
            return False
        if not run.started or run.finished or run.trainer is None:
            return True  # nothing trained since it was built (or from its checkpoint)
        began = time.perf_counter()
        self.buffer.flush()
        state = capture_run(run)
        store = CheckpointStore(run_checkpoint_dir(self.path, run.run_id), self.checkpoint_keep)
        run_id, step = run.run_id, state.global_step

        def write() -> None:
            wrote = time.perf_counter()
            state.write(store)
            self.write_seconds += time.perf_counter() - wrote
            fault_point("after_checkpoint")

        self._writer.submit(run_id, write, then=lambda: self.buffer.release(run_id, step))
        self.persist_seconds += time.perf_counter() - began
        self.checkpoints_written += 1
        return True

    def _fail_on_write_error(self, run: Run) -> bool:
        error = self._writer.take_error(run.run_id)
        if error is None:
            return True
        if run.run_id in self.runs and self._status.get(run.run_id) in (*IN_FLIGHT, RunStatus.STOPPED):
            self._fail(run, error, None)
        return False

    def _settle_checkpoints(self) -> None:
        """Wait for queued checkpoint writes; a run whose write failed fails now."""
        self._writer.drain()
        for run in list(self.runs.values()):
            self._fail_on_write_error(run)

    def restore_runs(self, plan: ResumePlan, data: FitData) -> list[int]:
        """Take back the runs of a stored sweep (`scheduler.resume`): finished ones are only
        registered (clones need their configs); the others are rebuilt and continue from their
        last checkpoint (from the start without one). Interrupted and NEW runs train on; runs
        STOPPED by a command stay parked, resumable. Returns the sweep's run ids."""
        self.sweep = plan.sweep
        ids = []
        for spec, rec in plan.runs(self.commands):
            ids.append(rec["run_id"])
            self._restore(spec, rec, data)
        return ids

    def _restore(self, spec: Any, rec: dict[str, Any], data: FitData) -> None:
        run_id, status = rec["run_id"], RunStatus(rec["status"])
        self._specs[run_id] = (spec, data)
        if status in (RunStatus.COMPLETED, RunStatus.FAILED):
            self._settle_ended_mlflow_run(rec, status)
            return
        if status not in (RunStatus.NEW, RunStatus.ONGOING, RunStatus.STOPPED):
            return  # DELETED
        info = CheckpointStore(run_checkpoint_dir(self.path, run_id), self.checkpoint_keep).latest()
        if info is None and rec["warm_start"]:
            self.store.update_run(
                run_id,
                status=RunStatus.FAILED,
                error="interrupted before its first checkpoint: its warm start cannot be rebuilt",
            )
            self.tracker.end_run(rec["mlflow_run_id"], "FAILED")
            return
        resume = RunResume(info) if info is not None else None
        start = resume.engine["sampler_start"] if resume is not None else 0
        through = resume.global_step if resume is not None else 0
        # What it logged after its checkpoint is trained again: out of the store; MLflow made to
        # hold exactly the store's durable steps (it may lack some, or hold a torn checkpoint's).
        self.store.rollback_metrics(run_id, through)
        mlflow_id = self.tracker.sync_metrics(rec["mlflow_run_id"], self.store.metric_steps(run_id), through)
        if mlflow_id != rec["mlflow_run_id"]:
            self.store.update_run(run_id, mlflow_run_id=mlflow_id)
        parked = status is RunStatus.STOPPED and not rec["interrupted"]
        self._status[run_id] = RunStatus.STOPPED if parked else RunStatus.NEW
        run = self._build(run_id, rec["name"], mlflow_id, spec, data, start)
        if run is None:
            return
        if resume is not None:
            run.continue_from(resume)
        if not parked:
            self._set_status(
                run,
                RunStatus.ONGOING,
                error=None,
                interrupted=0,
                chunks_done=run.chunks_done,
                global_step=run.global_step,
            )
            self.tracker.reopen_run(mlflow_id)
        elif self.tracker.run_status(mlflow_id) == "RUNNING":  # its process died before MLflow heard
            self.tracker.end_run(mlflow_id, "KILLED")
        where = (
            f"from its checkpoint at step {through} (chunk {run.chunks_done})" if resume else "from the start"
        )
        self.progress.note(f"run {run_id} {'stays STOPPED, resumable' if parked else 'continues'} {where}")

    def execution_summary(self, run_ids: Sequence[int]) -> list[str]:
        """How the runs `run_ids` will train: which fuse, and why the others are time-sliced."""
        runs = [self.runs[i] for i in run_ids if i in self.runs]
        fused = [r.run_id for r in runs if r.cohort_key is not None]
        lines = []
        if len(fused) > 1:
            lines.append(f"Runs {fused} train fused: one forward and backward per step for all of them")
        for run in runs:
            if run.cohort_key is None and len(runs) > 1:
                lines.append(f"Run {run.run_id} trains time-sliced: {run.unfused_reason}")
        return lines

    def _settle_ended_mlflow_run(self, rec: dict[str, Any], status: RunStatus) -> None:
        """A run that ended in the store whose process died before MLflow heard of it (its last
        metrics and its end were still queued): MLflow gets them now."""
        mlflow_id = rec["mlflow_run_id"]
        if not mlflow_id or self.tracker.run_status(mlflow_id) != "RUNNING":
            return
        steps = self.store.metric_steps(rec["run_id"])
        self.tracker.sync_metrics(mlflow_id, steps, max((step for step, _ in steps), default=0))
        self.tracker.end_run(mlflow_id, "FINISHED" if status is RunStatus.COMPLETED else "FAILED")

    @property
    def made(self) -> set[int]:
        """Ids of every run this controller created (any status)."""
        return set(self._specs)

    def progress_step(self, run: Run) -> None:
        self.progress.step(run)

    # ---- the round loop's view -------------------------------------------------------------------
    def turn_takers(self) -> list[Run | Cohort]:
        """Runs that want a turn, those that fuse grouped into cohorts (`scheduler.cohort`)."""
        runs = [run for run_id, run in sorted(self.runs.items()) if self.wants_turn(run)]
        if self.residency is not None:
            return runs  # the pool evicts and prefetches one run's state per turn: time-sliced
        return plan_cohorts(runs)

    def wants_turn(self, taker: Run | Cohort) -> bool:
        if isinstance(taker, Cohort):
            return any(self.wants_turn(run) for run in taker.members)
        return self._status.get(taker.run_id) in IN_FLIGHT and not taker.finished

    def take_turn(self, taker: Run | Cohort, upcoming: Sequence[Run | Cohort]) -> None:
        """One turn of `run`: it trains until it completes a chunk or ends; commands arriving
        meanwhile are applied at its next optimizer step, and the turn goes on if it may.
        A cohort's turn does the same for each of its members, fused (`scheduler.cohort`)."""
        if isinstance(taker, Cohort):
            self._take_cohort_turn(taker)
            return
        run = taker
        try:
            if self.residency is not None:
                self.residency.before_turn(run, upcoming)
            self._set_status(run, RunStatus.ONGOING)
            self.progress.begin_turn(run)
            while True:
                end = run.take_turn()
                if end is not TurnEnd.COMMANDS:
                    break
                self.apply_commands()
                if not self.wants_turn(run):
                    break  # stopped or deleted during its turn
            self._end_turn(run, end, upcoming)
        except FitCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - one run's trouble must not end the others
            self._fail(run, exc, traceback.format_exc())

    def _take_cohort_turn(self, cohort: Cohort) -> None:
        due = [m for m in cohort.members if self.wants_turn(m) and m.chunks_done == cohort.chunks_done]
        for run in due:
            self._set_status(run, RunStatus.ONGOING)
            run.trainer.rapidfire_slot = run.slot
        self.progress.begin_turn(due[0], fused=[run.run_id for run in due])
        turn = CohortTurn(
            due,
            advance=self._advance_member,
            apply_commands=self.apply_commands,
            wants_turn=self.wants_turn,
            joiners=lambda: self._joiners(cohort.key, turn),
            fail=lambda run, exc: self._fail(run, exc, traceback.format_exc()),
            compute=self._compute_thread().run,
        )
        try:
            turn.run()
        finally:  # every member stands at a step boundary (or has ended): it may train sliced next
            self._compute_thread().run(release_openmp_workers)  # a sliced run may compute next
            self.fused_steps += turn.fused_steps
            self.batched_generations += turn.batched_generations
            self.reference_sequences[0] += turn.references.computed
            self.reference_sequences[1] += turn.references.served
            for run in turn.state:
                if run.trainer is not None:
                    run.trainer.rapidfire_slot = None

    def _compute_thread(self) -> ComputeThread:
        if self._compute is None:
            self._compute = ComputeThread()
        return self._compute

    def _joiners(self, key: tuple, turn: CohortTurn) -> list[Run]:
        """Runs made during a cohort's turn (clones) that fuse with it: they join at the next step."""
        joining = [
            run
            for run in self.runs.values()
            if run.cohort_key == key and run not in turn.state and self.wants_turn(run)
        ]
        for run in joining:
            self._set_status(run, RunStatus.ONGOING)
            run.trainer.rapidfire_slot = run.slot
        return joining

    def _advance_member(self, run: Run) -> MemberState:
        """Resume a cohort member until it next pauses; ends its turn if it completed a chunk or
        finished. Its state says what it waits for."""
        try:
            end = run.take_turn()
            if end is TurnEnd.FUSED:
                return MemberState(run.slot.waiting_for)
            if end is TurnEnd.COMMANDS:
                return MemberState.COMMANDS
            self._end_turn(run, end, ())
        except FitCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - one run's trouble must not end the others
            self._fail(run, exc, traceback.format_exc())
        return MemberState.DONE

    def _end_turn(self, run: Run, end: TurnEnd, upcoming: Sequence[Run]) -> None:
        self.buffer.flush()
        status = self._status[run.run_id]
        if end is TurnEnd.FINISHED and status is RunStatus.ONGOING:
            if run.worker.error is not None:
                self._fail(run, run.worker.error, run.worker.error_traceback)
                return
            self._complete(run)
            status = RunStatus.COMPLETED
        elif status is not RunStatus.DELETED:
            if status is RunStatus.ONGOING and not self.checkpoint(run):
                return  # it failed persisting its state
            self.store.update_run(run.run_id, chunks_done=run.chunks_done, global_step=run.global_step)
        self.progress.end_turn(run, status.value)
        if self.residency is not None and run.run_id in self.runs:
            if status is RunStatus.ONGOING:
                self.residency.after_turn(run, upcoming)
            elif status is RunStatus.STOPPED:
                self.residency.park(run)

    def should_pause(self) -> bool:
        """Asked at every optimizer-step start of the running run (no I/O most of the time)."""
        if self._cancel.is_set() or self.commands.submitted.is_set():
            return True
        now = time.monotonic()
        if now - self._last_poll < COMMAND_POLL_SECONDS:
            return False
        self._last_poll = now
        return self.commands.has_pending()

    # ---- running -----------------------------------------------------------------------------------
    def run(self, residency: RunResidency | None, progress: ProgressDisplay) -> None:
        """Train until no run is NEW or ONGOING (STOPPED runs stay parked for a later resume)."""
        self.progress = progress
        self.residency = residency
        self._cancel.clear()
        self.lease.acquire()
        # Every trainer's train() starts with a full gc.collect() (accelerate's free_memory). In
        # this process the heap holds every run's trainer, datasets, MLflow and the rest: ~0.5 s a
        # collection on the 2-core dev machine, per run. What exists now lives until run_fit
        # ends: freeze it, so those collections only scan what training allocates.
        gc.collect()
        gc.freeze()
        lost = None  # the run store refused a write (control.unwritable): nothing more is recorded
        try:
            if residency is not None:
                residency.start(self.turn_takers())
            run_rounds(self, self.hooks)
        except BaseException as exc:  # KeyboardInterrupt and cancel included: leave no run thread running
            lost = unwritable_cause(exc)
            self.interrupt("run_fit was interrupted", record=lost is None)
            if lost is not None:
                raise lost.training_stopped() from None
            raise
        finally:
            if lost is None:
                self._settle_checkpoints()
            gc.unfreeze()
            if lost is None:
                self.buffer.flush()
                self.tracker.flush()  # the MLflow store is complete when run_fit returns
            self.lease.release()
            if residency is not None:
                self.residency = None
                residency.close()

    def cancel(self) -> None:
        """Ask a running `run` to stop every unfinished run (from any thread)."""
        self._cancel.set()

    def interrupt(self, reason: str, record: bool = True) -> None:
        """End every run's thread now (KeyboardInterrupt, cancel): runs in flight become STOPPED
        with `reason`; runs stopped by a command stay STOPPED (neither can resume in-process).
        `record=False` (the run store cannot be written): the threads end and nothing is
        written; the store holds each run as of its last checkpoint, so run_fit continues it."""
        # The run holding the turn (still training when the interrupt came) stops first, at its
        # next step: paused runs are only woken, to unwind, once no other run is executing.
        # More Ctrl-Cs while this runs are held off: every run must end up consistent.
        with sigint_deferred():
            self._writer.drain()  # checkpoints already taken reach the disk
            for run in sorted(self.runs.values(), key=lambda r: not r.worker.has_turn):
                run.abort()
                if record and self._status.get(run.run_id) in IN_FLIGHT:
                    # It continues from its last checkpoint on the next run_fit: what it logged
                    # after that checkpoint is trained again, so MLflow never gets it.
                    self.buffer.flush()
                    self.buffer.discard(run.run_id)
                    self._set_status(
                        run, RunStatus.STOPPED, error=reason, global_step=run.global_step, interrupted=1
                    )
                    self.tracker.end_run(run.mlflow_run_id, "KILLED")
                    self.progress.note(
                        f"run {run.run_id} STOPPED ({reason}); resumable from its last checkpoint"
                    )
                self._forget(run)
            if record:
                self.buffer.flush()
                self.tracker.flush()

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

    def _held(self, run_id: int, op: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise CommandRejected(
                f"run {run_id} is not held by this process (it was trained by one that has ended; "
                "run_fit with its sweep's arguments takes it back), "
                f"so it cannot be {op}"
            )
        return run

    def _stop(self, run_id: int, status: RunStatus) -> dict[str, Any]:
        if status not in IN_FLIGHT:
            raise CommandRejected(f"run {run_id} is {status.value}: only a NEW or ONGOING run can be stopped")
        run = self._held(run_id, "stopped")
        if not self.checkpoint(run):
            raise CommandRejected(f"run {run_id} FAILED while persisting its state at the stop")
        self._set_status(run, RunStatus.STOPPED, chunks_done=run.chunks_done, global_step=run.global_step)
        self.tracker.end_run(run.mlflow_run_id, "KILLED")
        if self.residency is not None:
            self.residency.park(run)
        return {"status": RunStatus.STOPPED.value, "global_step": run.global_step}

    def _resume(self, run_id: int, status: RunStatus) -> dict[str, Any]:
        if status is not RunStatus.STOPPED:
            raise CommandRejected(f"run {run_id} is {status.value}: only a STOPPED run can be resumed")
        run = self._held(run_id, "resumed")
        self._set_status(run, RunStatus.ONGOING, error=None)
        self.tracker.reopen_run(run.mlflow_run_id)
        if self.residency is not None:
            self.residency.add(run)
        return {"status": RunStatus.ONGOING.value, "global_step": run.global_step}

    def _delete(self, run_id: int, status: RunStatus) -> dict[str, Any]:
        run = self.runs.get(run_id)
        mlflow_id = self.store.get_run(run_id)["mlflow_run_id"]
        if run is not None:
            self.buffer.flush()
            run.abort()
            if self.residency is not None:
                self.residency.discard(run)
            self._remove_adapter(run)
            self._forget(run)
        self.store.update_run(run_id, status=RunStatus.DELETED)
        self._status[run_id] = RunStatus.DELETED
        if mlflow_id:
            self.tracker.delete_run(mlflow_id)
        _free_accelerator_memory()
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
        parent = self.runs.get(run_id)
        if parent is None or status is RunStatus.FAILED:
            raise CommandRejected(f"run {run_id} is {status.value}: its weights are gone, clone it cold")
        if parent.adapter_name is None:
            raise CommandRejected(f"run {run_id} trains without a LoRA adapter: warm start needs one")
        optimizer = getattr(parent.trainer, "optimizer", None) if parent.trainer is not None else None
        if self.residency is not None:
            self.residency.make_resident(parent)  # an evicted run's views hold no memory
        layers = capture_parent(parent.model, parent.adapter_name, optimizer)
        if self.residency is not None and status is RunStatus.STOPPED:
            self.residency.park(parent)
        return WarmStart(run_id, layers), parent.position()

    # ---- ends of runs ----------------------------------------------------------------------------
    def _set_status(self, run: Run, status: RunStatus, **fields: Any) -> None:
        self.store.update_run(run.run_id, status=status, **fields)  # IllegalTransition if not allowed
        self._status[run.run_id] = status

    def _complete(self, run: Run) -> None:
        out = self.path / "runs" / str(run.run_id)
        if run.adapter_name is not None:
            save_adapter(run.model, run.adapter_name, out / "adapter")
        else:  # full fine-tuning: the run's own model
            run.model.save_pretrained(str(out / "model"))
        # The chunk it ended in counts as done, even one it finished partway through (max_steps).
        chunks = max(run.chunks_done, run.current_chunk)
        self._set_status(run, RunStatus.COMPLETED, chunks_done=chunks, global_step=run.global_step)
        fault_point("after_completion")
        self.buffer.release_all(run.run_id)
        self.tracker.end_run(run.mlflow_run_id, "FINISHED")
        if self.residency is not None:
            self.residency.forget(run)
        run.release()

    def _fail(self, run: Run, exc: BaseException, tb: str | None) -> None:
        if unwritable_cause(exc) is not None:
            raise exc  # not this run's failure: the store cannot record anything (run() stops)
        reason = f"{type(exc).__name__}: {exc}"
        self.buffer.release_all(run.run_id)
        if self._status.get(run.run_id) is not RunStatus.DELETED:
            self._set_status(run, RunStatus.FAILED, error=reason, global_step=run.global_step)
            self.tracker.end_run(run.mlflow_run_id, "FAILED")
        if not run.finished:
            run.abort()
        if self.residency is not None:
            self._release_pooled(run)
        self._remove_adapter(run)
        self._forget(run)
        _free_accelerator_memory()
        self.progress.note(f"run {run.run_id} FAILED: {reason}")
        if tb and os.environ.get("RAPIDFIRE_DEBUG"):
            self.progress.note(tb)

    def _fail_unbuilt(self, run_id: int, mlflow_id: str, data: FitData, exc: Exception, tb: str) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self.store.update_run(run_id, status=RunStatus.FAILED, error=reason)
        self._status.pop(run_id, None)
        self.tracker.end_run(mlflow_id, "FAILED")
        data.registry.discard_adapter(f"run_{run_id}")  # it may have been attached before the error
        _free_accelerator_memory()
        self.progress.note(f"run {run_id} FAILED: {reason}")
        if os.environ.get("RAPIDFIRE_DEBUG"):
            self.progress.note(tb)

    def _release_pooled(self, run: Run) -> None:
        """Let a failed run's pooled state go; if even that fails (e.g. out of device memory while
        restoring it), its state stays in the host pool until the end and the other runs go on."""
        import warnings

        try:
            self.residency.discard(run)
        except Exception as exc:  # noqa: BLE001 - the run has already failed; the others must not
            warnings.warn(
                f"run {run.run_id}: its state could not be released from the pool ({exc}); "
                "it stays in the host arena until run_fit ends",
                RuntimeWarning,
                stacklevel=2,
            )

    def _remove_adapter(self, run: Run) -> None:
        if run.adapter_name is not None:
            run.data.registry.discard_adapter(run.adapter_name)

    def _forget(self, run: Run) -> None:
        run.release()
        self.runs.pop(run.run_id, None)

    def close(self) -> None:
        """End every parked run's thread (the experiment ends); STOPPED runs stay STOPPED."""
        for run in list(self.runs.values()):
            run.abort()
            self._forget(run)
        if self._compute is not None:
            self._compute.close()
            self._compute = None


def save_adapter(model, adapter_name: str, out_dir: Path) -> None:
    """Write one run's adapter so that `PeftModel.from_pretrained(base, out_dir)` loads it."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=[adapter_name])
    src = tmp / adapter_name if (tmp / adapter_name).is_dir() else tmp
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.move(str(src), str(out_dir))
    shutil.rmtree(tmp, ignore_errors=True)


def _free_accelerator_memory() -> None:
    import torch

    gc.collect()  # a failed step's tensors may sit in reference cycles (frames, autograd graph)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
