"""The executor interface: what the run controller asks of the thing that trains runs on one device.

Design note (for whoever writes an executor; issue 21 Part 2 builds the Ray one on this)
------------------------------------------------------------------------------------------
Two sides, one experiment:

- The **controller** (`scheduler.controller.RunController`, in the user's process) owns the
  experiment: the run and command stores, the owner lease, tracking (MLflow and the others,
  through the metric buffer), the search policies, the status of every run (one setter, one
  table: `scheduler.run_lifecycle`), the round loop (`scheduler.loop`) and *placement*: which
  executor trains which run. It writes every chunk checkpoint (`control.checkpoints`).
- An **executor** owns one device: its resident base model(s) (built by the user's
  `create_model`), its state pool, the trainers of the runs placed on it, turn-taking and fused
  cohorts on it, and capturing a run's state for a checkpoint. It never writes a run's status,
  the run store or a tracker: it *reports* (`RunReport`) and the controller applies the report.

An executor never receives model objects: a run is placed by id with how to build it
(`RunOrder`: the run's spec, i.e. the user's config with its functions, the sweep's `FitData`
with the user's `create_model`, its start position, a warm start, or a chunk checkpoint to
continue from). So a remote executor builds its own trainers next to its own device, and a
run moves between executors at a chunk end as its chunk checkpoint: `capture(run_id)` on the
old one (the controller writes it), `remove(run_id)` there, then `place(RunOrder(...,
resume_from=<that checkpoint folder>))` on the new one -- exactly what crash-resume does, so a
lost executor is a resume elsewhere.

The calls, in the order a sweep makes them (the in-process executor is
`scheduler.local_executor.LocalExecutor`; `tests/scheduler/fake_executor.py` is a fake):

    executor.connect(host)                  the controller's callbacks (ExecutorHost), once
    executor.place(order) -> Placement      build the run now (raises: the run FAILs with the reason)
    executor.start_fit(state_budget)        a fit (run_fit, continue_fit) begins
    executor.turn_takers(run_ids)           the runs (of those ids, all in flight) that want a turn,
                                            grouped: a sliced run or a fused cohort is one taker
    executor.take_turn(taker, upcoming)     train each of the taker's runs through its next chunk;
        host.turn_begins(runs)                the runs about to train (they become ONGOING)
        host.record(...), host.on_progress(run)   metric rows, progress, as they happen
        host.should_pause() -> True           at an optimizer-step start: commands are waiting;
        host.apply_commands()                 the runs stand at a step boundary while the
                                              controller applies them (it may call park / unpark /
                                              capture / warm_start_from / remove / place meanwhile:
                                              an executor must accept these calls during a turn)
        host.report(RunReport)                a run's turn ended: CHUNK (with its captured state),
                                              PAUSED (stopped or deleted meanwhile), FINISHED (its
                                              result saved), or FAILED (the executor let it go)
    executor.capture(run_id) -> RunCheckpoint  a paused run's state on the host (stop, move)
    executor.progress(run_id) -> RunProgress   where a held run stands (chunks_done, global_step)
    executor.park(run_id) / unpark(run_id)  a STOPPED run's state may leave / must come back
    executor.warm_start_from(run_id)        a parent's adapter (and moments) + its data position
    executor.remove(run_id)                 end the run's thread, free its adapter and state
    executor.interrupt() -> {id: step}      end every run's thread now (Ctrl-C, cancel)
    executor.end_fit()                      the fit is over: per-fit resources go (parked runs stay)
    executor.close()                        the experiment ends: every run here ends

Placement is the controller's: it picks the executor of each new run (`RunController.placer`),
and only it moves runs. Run ids are the run store's; an executor keeps no other identity.

`RunOrder.fit` is the sweep's `scheduler.run.FitData` as the controller built it: its model
registry may already hold the first base model (validation loads it in the user's process). A
remote executor builds its own registry from the same `create_model` (and its datasets from the
same rows) rather than shipping loaded models; the run's spec and the user's functions travel by
pickle (cloudpickle for notebook-defined functions).

A remote executor (a Ray actor) may deliver `host.record` / `host.report` in batches at the end
of its calls, in the order they happened; `host.should_pause` may read a flag the controller
sets when a command is submitted; instead of calling `host.apply_commands` it may end the turn
early at that step boundary (`take_turn` returns True, nothing reported for the paused runs):
the controller applies the commands and calls `take_turn` again for the same taker while any of
its runs is in flight, and the runs continue exactly where they paused.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rapidfire_core.control.checkpoints import CheckpointInfo
from rapidfire_core.scheduler.run_checkpoint import RunCheckpoint


class FitCancelled(Exception):
    """The fit was cancelled (`FitHandle.cancel()`): raised by `host.apply_commands`; an executor
    lets it through (no run fails), and unfinished runs stop as on a KeyboardInterrupt."""


class CannotWarmStart(Exception):
    """A warm start from this run is impossible (the message says why): the clone command fails."""


@dataclass(frozen=True)
class RunOrder:
    """What the controller hands an executor to place one run (built there, by id).

    spec: the run's config (`automl` run spec: trainer type, model config with the user's
    functions, knobs). fit: the sweep's shared inputs (`scheduler.run.FitData`: datasets, chunk
    plan, the user's `create_model` behind its model registry). output_dir: the run's folder
    (`layout.run_dir`): the trainer's output_dir, where FINISHED saves the adapter or model.
    start_position: the run's first place in the chunk order, in plan rows (0; a warm clone's
    parent's position). warm_start: a `trainers.warm_start.WarmStart` from `warm_start_from`.
    resume_from: a verified chunk checkpoint (`control.checkpoints.CheckpointInfo`, written from a
    `RunCheckpoint`): the run continues from it exactly (its start position is the checkpoint's).
    parked: the run is STOPPED by a command: placed, but kept out of turns until `unpark`."""

    run_id: int
    name: str
    mlflow_run_id: str
    spec: Any
    fit: Any
    output_dir: Path
    start_position: int = 0
    warm_start: Any = None
    resume_from: CheckpointInfo | None = None
    parked: bool = False


@dataclass(frozen=True)
class Placement:
    """A placed run, as the controller records it.

    params: the values the run trains with, for the trackers (`tracking.effective_params`: what
    was typed, and the effective value where it differs). chunks_done / global_step: where it
    stands (non-zero when it continues from a checkpoint). cohort_key: runs with equal keys on one
    executor train fused (None: time-sliced, `unfused_reason` says why)."""

    run_id: int
    executor: str
    params: dict[str, Any]
    chunks_done: int = 0
    global_step: int = 0
    cohort_key: Any = None
    unfused_reason: str | None = None


class RunOutcome(enum.Enum):
    """How a run's turn ended, in a `RunReport` (`scheduler.run.TurnEnd` is a run's pause reason)."""

    CHUNK = "chunk"  # it completed a chunk; `state` holds its captured state to checkpoint
    PAUSED = "paused"  # it stopped training this turn without completing a chunk (stopped, deleted)
    FINISHED = "finished"  # its training ended; its adapter (or model) is saved in output_dir
    FAILED = "failed"  # exception, OOM, NaN: `error` says what; the executor no longer holds it


@dataclass
class RunReport:
    """A run's turn ended (the only way an executor tells the controller about a run's fate).

    run: the run as the progress display reads it (its end-of-turn line).
    state: for CHUNK, the run's state captured at the chunk end (host copies: the controller
    writes it as the run's chunk checkpoint, in a background thread). error / traceback: FAILED."""

    run_id: int
    outcome: RunOutcome
    run: RunProgress
    chunks_done: int
    global_step: int
    state: RunCheckpoint | None = None
    error: str | None = None
    traceback: str | None = None


@runtime_checkable
class RunProgress(Protocol):
    """What the progress display reads of a training run (a `scheduler.run.Run`, or a snapshot)."""

    run_id: int
    knobs: dict[str, Any]
    num_chunks: int  # chunks per epoch
    chunks_done: int
    global_step: int
    max_steps: int
    latest: dict[str, float]


class ExecutorHost(Protocol):
    """The controller's side, as an executor calls it (from its turn's threads)."""

    def turn_begins(self, runs: Sequence[RunProgress], fused: bool = False, joining: bool = False) -> None:
        """`runs` are about to train, together (fused: a cohort's due members): each becomes
        ONGOING. joining: runs made during the cohort's turn (clones) join it at the next step."""

    def in_flight(self, run_id: int) -> bool:
        """True while the run is NEW or ONGOING (a command may have stopped or deleted it)."""

    def record(
        self, run_id: int, step: int, epoch: float | None, chunk: int, metrics: dict[str, float]
    ) -> None:
        """One metric row of a run (every scalar TRL logged at `step`)."""

    def on_progress(self, run: RunProgress) -> None:
        """A run took an optimizer step (the progress display; called often, must be cheap)."""

    def should_pause(self) -> bool:
        """Asked at every optimizer-step start: True when commands wait (cheap: no I/O mostly)."""

    def apply_commands(self) -> None:
        """Apply waiting commands now; the turn's runs stand at an optimizer-step boundary."""

    def report(self, report: RunReport) -> None:
        """A run's turn ended (`RunReport`); the controller applies it (status, checkpoint)."""

    def note(self, text: str) -> None:
        """A line for the user and the experiment log (e.g. which runs train fused)."""


@dataclass
class ExecutorStats:
    """Counters of an executor's fused work (benchmarks, tests)."""

    fused_steps: int = 0  # forwards that fused 2+ runs' calls
    batched_generations: int = 0  # generates that batched 2+ runs' prompts (GRPO)
    reference_sequences: list[int] = field(default_factory=lambda: [0, 0])  # DPO: [computed, served]
    capture_seconds: float = 0.0  # capturing run state for checkpoints (on the training path)


class Executor(Protocol):
    """Trains the runs placed on one device (module docstring for the order of calls).

    `name` says where it trains ("local", "ray:<node>/gpu0"); runs are addressed by id only;
    `stats` counts its fused work."""

    name: str
    stats: ExecutorStats

    def connect(self, host: ExecutorHost) -> None:
        """Reports and questions go to `host` (the controller) from now on."""

    def start_fit(self, state_budget: int | None = None) -> None:
        """A fit begins. state_budget: device bytes for the runs' trainable state
        (`memory.residency`; None: all of it stays on the device)."""

    def place(self, order: RunOrder) -> Placement:
        """Build the run (trainer, adapter on its base model, sampler; continue from
        `order.resume_from`). An exception means the run cannot be built: it FAILs with it."""

    def holds(self, run_id: int) -> bool:
        """True while the run is placed here (parked, training or finished with its adapter kept)."""

    def turn_takers(self, run_ids: Sequence[int]) -> list[Any]:
        """The takers of the next turns among `run_ids` (placed here, in flight), in run-id order:
        each has `run_id` (its smallest) and `chunks_done` (its members' least) and is opaque
        otherwise; runs whose training ended are left out."""

    def members(self, taker: Any) -> list[int]:
        """The ids of the runs a taker of `turn_takers` trains."""

    def take_turn(self, taker: Any, upcoming: Sequence[Any]) -> bool:
        """Train the taker's due runs through their next chunk (module docstring); `upcoming`:
        the takers after it (a pool prefetches the next one's state). True: the turn paused at
        an optimizer-step boundary for waiting commands, without applying them (call again after
        applying them); False: the turn is over (every run reported)."""

    def progress(self, run_id: int) -> RunProgress:
        """Where a held run stands now (chunks_done, global_step, latest metrics)."""

    def capture(self, run_id: int) -> RunCheckpoint | None:
        """The paused run's state on the host (None: it has not trained since it was placed)."""

    def park(self, run_id: int) -> None:
        """The run is STOPPED: its state may leave the device; it takes no turn until `unpark`."""

    def unpark(self, run_id: int) -> None:
        """A parked run takes turns again, continuing exactly where it stopped."""

    def warm_start_from(self, run_id: int) -> tuple[Any, int]:
        """(a `trainers.warm_start.WarmStart` of the run's adapter and optimizer moments now, its
        position in the chunk order); CannotWarmStart with the reason if it has no adapter."""

    def remove(self, run_id: int) -> None:
        """End the run here: its thread, adapter and pooled state are freed (delete, a move away)."""

    def interrupt(self) -> dict[int, int]:
        """End every run's thread now (the one training first) and let them go: {run id: the
        global step it stood at} of the runs it held (their last checkpoint is where they resume)."""

    def end_fit(self) -> None:
        """The fit is over: per-fit resources (state pool, compute thread) go; placed runs stay."""

    def close(self) -> None:
        """The experiment ends: every run placed here ends (STOPPED runs stay STOPPED in the store)."""


__all__ = [
    "CannotWarmStart",
    "Executor",
    "ExecutorHost",
    "ExecutorStats",
    "FitCancelled",
    "Placement",
    "RunOrder",
    "RunProgress",
    "RunReport",
]
