"""The in-process executor: trains runs in this process, on its one device (`scheduler.executor`).

This is the single-device engine: the runs' trainers and threads (`scheduler.run`), turn-taking
of time-sliced runs, fused cohorts (`scheduler.cohort`), the device state pool
(`memory.residency`), capturing run state for checkpoints (`scheduler.run_checkpoint`) and saving
a finished run's adapter. It decides nothing about a run's fate: at each turn's end it reports
(`RunReport`) and the controller (`scheduler.controller`) applies the report.

Turns. A time-sliced run trains until it completes a chunk or ends; when commands wait at an
optimizer-step start it pauses and the host applies them (`host.apply_commands`), then the turn
goes on unless the run was stopped or deleted meanwhile. A cohort's turn does the same for each
of its due members, fused (`scheduler.cohort.CohortTurn`); runs placed during the turn that fuse
with it (clones) join at the next step.
"""

from __future__ import annotations

import gc
import shutil
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rapidfire_core import layout
from rapidfire_core.control.unwritable import unwritable_cause
from rapidfire_core.memory.residency import RunResidency
from rapidfire_core.scheduler.cohort import Cohort, CohortTurn, ComputeThread, MemberState, plan_cohorts
from rapidfire_core.scheduler.executor import (
    CannotWarmStart,
    ExecutorHost,
    ExecutorStats,
    FitCancelled,
    Placement,
    RunOrder,
    RunOutcome,
    RunReport,
)
from rapidfire_core.scheduler.openmp_pool import release_openmp_workers
from rapidfire_core.scheduler.run import Run, RunHooks, TurnEnd
from rapidfire_core.scheduler.run_checkpoint import RunCheckpoint, RunResume
from rapidfire_core.scheduler.run_checkpoint import capture as capture_run
from rapidfire_core.tracking.effective_params import spec_params
from rapidfire_core.trainers.warm_start import WarmStart, capture_parent


class LocalExecutor:
    """Runs placed in this process (module docstring); implements `scheduler.executor.Executor`."""

    name = "local"

    def __init__(self) -> None:
        self.runs: dict[int, Run] = {}  # placed runs (parked and finished ones included)
        self.stats = ExecutorStats()
        self.residency: RunResidency | None = None
        self._host: ExecutorHost | None = None
        self._parked: set[int] = set()
        self._output: dict[int, Path] = {}  # each placed run's folder (RunOrder.output_dir)
        self._compute: ComputeThread | None = None  # runs fused forwards/backwards (scheduler.cohort)

    # ---- placing runs ----------------------------------------------------------------------------
    def connect(self, host: ExecutorHost) -> None:
        self._host = host

    def place(self, order: RunOrder) -> Placement:
        host = self._host
        resume = RunResume(order.resume_from) if order.resume_from is not None else None
        start = resume.engine["sampler_start"] if resume is not None else order.start_position
        hooks = RunHooks(record=host.record, on_progress=host.on_progress, should_pause=host.should_pause)
        try:
            run = Run(
                run_id=order.run_id,
                name=order.name,
                spec=order.spec,
                knobs=dict(order.spec.knobs),
                mlflow_run_id=order.mlflow_run_id,
                data=order.fit,
                hooks=hooks,
                output_dir=order.output_dir,
                start_position=start,
                warm_start=order.warm_start,
            )
        except BaseException:
            order.fit.registry.discard_adapter(f"run_{order.run_id}")  # attached before the error?
            free_accelerator_memory()
            raise
        if resume is not None:
            run.continue_from(resume)
        self.runs[run.run_id] = run
        self._output[run.run_id] = order.output_dir
        if order.parked:
            self._parked.add(run.run_id)
        elif self.residency is not None:
            self.residency.add(run)
        return Placement(
            run_id=run.run_id,
            executor=self.name,
            # The values the run uses (fp16=False on a CPU, ...), and what was typed where they differ.
            params=spec_params(order.spec, run.knobs, run.trainer.args),
            chunks_done=run.chunks_done,
            global_step=run.global_step,
            cohort_key=run.cohort_key,
            unfused_reason=run.unfused_reason,
        )

    def holds(self, run_id: int) -> bool:
        return run_id in self.runs

    # ---- a fit -------------------------------------------------------------------------------------
    def start_fit(self, state_budget: int | None = None) -> None:
        # Every trainer's train() starts with a full gc.collect() (accelerate's free_memory). In
        # this process the heap holds every run's trainer, datasets, MLflow and the rest: ~0.5 s a
        # collection on the 2-core dev machine, per run. What exists now lives until the fit
        # ends: freeze it, so those collections only scan what training allocates.
        gc.collect()
        gc.freeze()
        if state_budget is not None:
            self.residency = RunResidency(state_budget)
            self.residency.start(self._wanting_turns())

    def end_fit(self) -> None:
        gc.unfreeze()
        if self.residency is not None:
            residency, self.residency = self.residency, None
            residency.close()

    def _wanting_turns(self) -> list[Run]:
        return [r for i, r in sorted(self.runs.items()) if i not in self._parked and not r.finished]

    # ---- turns ------------------------------------------------------------------------------------
    def turn_takers(self, run_ids: Sequence[int]) -> list[Run | Cohort]:
        wanted = set(run_ids)
        runs = [run for run_id, run in sorted(self.runs.items()) if run_id in wanted and not run.finished]
        if self.residency is not None:
            return runs  # the pool evicts and prefetches one run's state per turn: time-sliced
        return plan_cohorts(runs)

    def members(self, taker: Run | Cohort) -> list[int]:
        return [m.run_id for m in taker.members] if isinstance(taker, Cohort) else [taker.run_id]

    def take_turn(self, taker: Run | Cohort, upcoming: Sequence[Run | Cohort]) -> bool:
        """A whole turn: commands are applied inside it (`host.apply_commands`), so False."""
        if isinstance(taker, Cohort):
            self._take_cohort_turn(taker)
            return False
        run, host = taker, self._host
        try:
            if self.residency is not None:
                self.residency.before_turn(run, upcoming)
            host.turn_begins([run])
            while True:
                end = run.take_turn()
                if end is not TurnEnd.COMMANDS:
                    break
                host.apply_commands()
                if not self._wants_turn(run):
                    break  # stopped or deleted during its turn
            self._end_turn(run, end, upcoming)
        except FitCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - one run's trouble must not end the others
            self._fail(run, exc, traceback.format_exc())
        return False

    def _wants_turn(self, run: Run) -> bool:
        return run.run_id in self.runs and self._host.in_flight(run.run_id) and not run.finished

    def _take_cohort_turn(self, cohort: Cohort) -> None:
        due = [m for m in cohort.members if self._wants_turn(m) and m.chunks_done == cohort.chunks_done]
        for run in due:
            run.trainer.rapidfire_slot = run.slot
        self._host.turn_begins(due, fused=True)
        turn = CohortTurn(
            due,
            advance=self._advance_member,
            apply_commands=self._host.apply_commands,
            wants_turn=self._wants_turn,
            joiners=lambda: self._joiners(cohort.key, turn),
            fail=lambda run, exc: self._fail(run, exc, traceback.format_exc()),
            compute=self._compute_thread().run,
        )
        try:
            turn.run()
        finally:  # every member stands at a step boundary (or has ended): it may train sliced next
            self._compute_thread().run(release_openmp_workers)  # a sliced run may compute next
            self.stats.fused_steps += turn.fused_steps
            self.stats.batched_generations += turn.batched_generations
            self.stats.reference_sequences[0] += turn.references.computed
            self.stats.reference_sequences[1] += turn.references.served
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
            if run.cohort_key == key and run not in turn.state and self._wants_turn(run)
        ]
        if joining:
            self._host.turn_begins(joining, fused=True, joining=True)
        for run in joining:
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

    def _end_turn(self, run: Run, end: TurnEnd, upcoming: Sequence[Run | Cohort]) -> None:
        in_flight = self._host.in_flight(run.run_id)
        if end is TurnEnd.FINISHED and in_flight:
            if run.worker.error is not None:
                self._fail(run, run.worker.error, run.worker.error_traceback)
                return
            save_result(run, self._output[run.run_id])
            # The chunk it ended in counts as done, even one it finished partway through (max_steps).
            chunks = max(run.chunks_done, run.current_chunk)
            self._host.report(RunReport(run.run_id, RunOutcome.FINISHED, run, chunks, run.global_step))
            if self.residency is not None:
                self.residency.forget(run)
            run.release()
            return
        state = self.capture(run.run_id) if in_flight else None
        outcome = RunOutcome.CHUNK if in_flight else RunOutcome.PAUSED
        self._host.report(RunReport(run.run_id, outcome, run, run.chunks_done, run.global_step, state=state))
        if self.residency is not None and run.run_id in self.runs:
            if self._host.in_flight(run.run_id):
                self.residency.after_turn(run, upcoming)
            elif run.run_id in self._parked:
                self.residency.park(run)

    def _fail(self, run: Run, exc: BaseException, tb: str | None) -> None:
        """The run is let go here (thread, pooled state, adapter), then reported FAILED. A store
        the disk refuses is not this run's failure (nothing more can be recorded): it is raised,
        and the controller stops the fit with every run resumable (`control.unwritable`)."""
        if unwritable_cause(exc) is not None:
            raise exc
        if not run.finished:
            run.abort()
        self.remove(run.run_id)
        reason = f"{type(exc).__name__}: {exc}"
        self._host.report(
            RunReport(run.run_id, RunOutcome.FAILED, run, run.chunks_done, run.global_step, None, reason, tb)
        )

    # ---- run state ----------------------------------------------------------------------------------
    def capture(self, run_id: int) -> RunCheckpoint | None:
        run = self.runs[run_id]
        if not run.started or run.finished or run.trainer is None:
            return None  # nothing trained since it was built (or from its checkpoint)
        began = time.perf_counter()
        state = capture_run(run)
        self.stats.capture_seconds += time.perf_counter() - began
        return state

    def progress(self, run_id: int) -> Run:
        return self.runs[run_id]

    def park(self, run_id: int) -> None:
        self._parked.add(run_id)
        if self.residency is not None:
            self.residency.park(self.runs[run_id])

    def unpark(self, run_id: int) -> None:
        self._parked.discard(run_id)
        if self.residency is not None:
            self.residency.add(self.runs[run_id])

    def warm_start_from(self, run_id: int) -> tuple[WarmStart, int]:
        parent = self.runs[run_id]
        if parent.adapter_name is None:
            raise CannotWarmStart(f"run {run_id} trains without a LoRA adapter: warm start needs one")
        optimizer = getattr(parent.trainer, "optimizer", None) if parent.trainer is not None else None
        if self.residency is not None:
            self.residency.make_resident(parent)  # an evicted run's views hold no memory
        layers = capture_parent(parent.model, parent.adapter_name, optimizer)
        if self.residency is not None and run_id in self._parked:
            self.residency.park(parent)
        return WarmStart(run_id, layers), parent.position()

    def remove(self, run_id: int) -> None:
        run = self.runs.pop(run_id, None)
        self._parked.discard(run_id)
        if run is None:
            return
        run.abort()
        if self.residency is not None:
            self._release_pooled(run)
        if run.adapter_name is not None:
            run.data.registry.discard_adapter(run.adapter_name)
        run.release()
        free_accelerator_memory()

    def _release_pooled(self, run: Run) -> None:
        """Let a run's pooled state go; if even that fails (e.g. out of device memory while
        restoring it), its state stays in the host pool until the end and the other runs go on."""
        try:
            self.residency.discard(run)
        except Exception as exc:  # noqa: BLE001 - the run is over; the others must not fail
            warnings.warn(
                f"run {run.run_id}: its state could not be released from the pool ({exc}); "
                "it stays in the host arena until run_fit ends",
                RuntimeWarning,
                stacklevel=2,
            )

    # ---- ends --------------------------------------------------------------------------------------
    def interrupt(self) -> dict[int, int]:
        # The run holding the turn (still training when the interrupt came) stops first, at its
        # next step: paused runs are only woken, to unwind, once no other run is executing.
        held = {}
        for run in sorted(self.runs.values(), key=lambda r: not r.worker.has_turn):
            run.abort()
            held[run.run_id] = run.global_step
            run.release()
        self.runs.clear()
        self._parked.clear()
        return held

    def close(self) -> None:
        for run in list(self.runs.values()):
            run.abort()
            run.release()
        self.runs.clear()
        self._parked.clear()
        if self._compute is not None:
            self._compute.close()
            self._compute = None


def save_result(run: Run, out: Path) -> None:
    """A finished run's result in its folder `out`: adapter/ (LoRA) or model/ (full fine-tuning)."""
    if run.adapter_name is not None:
        save_adapter(run.model, run.adapter_name, out / layout.ADAPTER_DIR_NAME)
    else:  # full fine-tuning: the run's own model
        run.model.save_pretrained(str(out / layout.MODEL_DIR_NAME))


def save_adapter(model: Any, adapter_name: str, out_dir: Path) -> None:
    """Write one run's adapter so that `PeftModel.from_pretrained(base, out_dir)` loads it."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=[adapter_name])
    src = tmp / adapter_name if (tmp / adapter_name).is_dir() else tmp
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.move(str(src), str(out_dir))
    shutil.rmtree(tmp, ignore_errors=True)


def free_accelerator_memory() -> None:
    import torch

    gc.collect()  # a failed step's tensors may sit in reference cycles (frames, autograd graph)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["LocalExecutor", "free_accelerator_memory", "save_adapter", "save_result"]
