"""The chunk-round loop with several executors training at once (`scheduler.loop`'s contract).

    round = 1
    apply pending commands
    while some run wants a turn:
        placement at the chunk boundary: each due taker (a run or a fused cohort) is assigned an
            executor (`placement`); one assigned elsewhere moves there (`RunController.move`:
            through its chunk checkpoint, exactly)
        until no executor has a due taker and no turn is in flight:
            each idle executor starts the turn of its next due taker
            wait up to POLL_SECONDS for a turn to end; the metric rows and progress the training
                turns logged meanwhile reach the controller's stores; an ended turn's report
                reaches the controller (checkpoint, completion, failure)
            commands waiting?  every training turn pauses at its next optimizer step; once all
                               have, the commands are applied (they see every run at a step
                               boundary, as on one device); the paused runs continue after
            an executor lost:  its runs continue on the others from their last chunk checkpoint
                               (`RunController.executor_lost`), in this round
        hooks.round_end(controller, round)                     # automatic searches
        apply pending commands
        round += 1

A round ends when all its takers have trained their chunk, so the automatic searches decide at
the same points as on one device and every run has comparable numbers after chunk 1. Every
controller action happens in this (the controller's) thread; the executors only train.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rapidfire_core.cluster.executors_view import write_view
from rapidfire_core.cluster.placement import BalancedPlacement, Item, Placement
from rapidfire_core.cluster.ray_executor import ExecutorLost, RayExecutor, RemoteTaker
from rapidfire_core.cluster.ray_runtime import require_ray
from rapidfire_core.scheduler.loop import LoopHooks

POLL_SECONDS = 0.5  # commands are noticed within this while turns train
VIEW_SECONDS = 1.0  # executors.json is written about this often


class ParallelRounds:
    """The loop of one fit (module docstring) over the controller's executors (`RayExecutor`s)."""

    def __init__(self, controller: Any, placement: Placement) -> None:
        self.controller = controller
        self.placement = placement
        self.seconds: dict[int, float] = {}  # taker run id -> seconds of its last turn
        self.move_seconds: list[float] = []  # each move's time (capture is the chunk's checkpoint)
        self.moves = 0
        self.executors = list(controller.executors)  # lost ones stay in the view
        self._shown = 0.0

    @property
    def move_cost(self) -> float:
        """The mean seconds of a move so far (0 before the first)."""
        return sum(self.move_seconds) / len(self.move_seconds) if self.move_seconds else 0.0

    def run(self, hooks: LoopHooks) -> None:
        controller = self.controller
        number = 1
        controller.apply_commands()
        try:
            while self._all_takers():
                self._round(number, hooks)
                for hook in hooks.round_end:
                    hook(controller, number)
                controller.apply_commands()
                number += 1
        except BaseException:
            for executor in controller.executors:
                executor.request_pause()  # turns in flight end at their next step (interrupt)
            raise
        finally:
            self._show(force=True)

    def _show(self, force: bool = False) -> None:
        """executors.json (`executors_view`): where each run trains, each executor's busy share;
        about once a second."""
        if force or time.monotonic() - self._shown >= VIEW_SECONDS:
            self._shown = time.monotonic()
            write_view(self.controller.path, self.executors)

    # ---- takers --------------------------------------------------------------------------------
    def _takers_on(self, executor: RayExecutor) -> list[RemoteTaker]:
        """The executor's takers (its in-flight runs'); [] when it was lost (its runs moved)."""
        try:
            return executor.turn_takers(self.controller.runs_on(executor))
        except ExecutorLost:
            self.controller.executor_lost(executor)
            return []

    def _all_takers(self) -> list[RemoteTaker]:
        return [t for e in list(self.controller.executors) for t in self._takers_on(e)]

    def _wants_turn(self, taker: RemoteTaker) -> bool:
        return any(self.controller.in_flight(i) and taker.executor.holds(i) for i in taker.members)

    def _next_due(self, executor: RayExecutor, number: int) -> RemoteTaker | None:
        due = [t for t in self._takers_on(executor) if t.chunks_done < number and self._wants_turn(t)]
        return due[0] if due else None

    # ---- a round -------------------------------------------------------------------------------
    def _place(self, number: int) -> None:
        """Assign the round's due takers to executors; move the ones assigned elsewhere."""
        executors = {e.index: e for e in self.controller.executors}
        takers = {t.run_id: t for t in self._all_takers() if t.chunks_done < number}
        items = [Item(t.run_id, self.seconds.get(t.run_id), t.executor.index) for t in takers.values()]
        plan = self.placement.assign(items, sorted(executors), self.move_cost)
        for run_id, index in sorted(plan.items()):
            taker, target = takers[run_id], executors.get(index)
            if target is None or target is taker.executor or target not in self.controller.executors:
                continue
            began = time.perf_counter()
            for member in taker.members:
                if self.controller.in_flight(member):
                    self.controller.move(member, target)
            self.move_seconds.append(time.perf_counter() - began)
            self.moves += 1
            self.seconds[min(taker.members)] = self.seconds.pop(run_id, None) or 0.0

    def _round(self, number: int, hooks: LoopHooks) -> None:
        ray = require_ray()
        controller = self.controller
        self._place(number)
        running: dict[Any, tuple[RayExecutor, RemoteTaker]] = {}  # object ref -> its turn
        pausing = False
        paused: dict[RayExecutor, RemoteTaker] = {}  # turns paused for commands, to continue
        while True:
            if not pausing:
                busy = {e for e, _ in running.values()}
                for executor in [e for e in list(controller.executors) if e not in busy]:
                    # A turn paused for commands goes on first: its runs stand mid-chunk.
                    taker = paused.pop(executor, None)
                    if taker is None or not self._wants_turn(taker):
                        taker = self._next_due(executor, number)
                    if taker is not None:
                        running[executor.start_turn(taker)] = (executor, taker)
            if not running:
                if not pausing:
                    return
                pausing = False
                controller.apply_commands()
                for hook in hooks.between_turns:
                    hook(controller)
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
            self._drain(running, ready)
            self._show()
            if not pausing and controller.should_pause():
                pausing = True
                for executor, _ in running.values():
                    executor.request_pause()
            for ref in ready:
                executor, taker = running.pop(ref)
                try:
                    stopped_early = executor.finish_turn(ref)
                except ExecutorLost:
                    controller.executor_lost(executor)
                    continue
                if stopped_early:
                    pausing = True
                    if self._wants_turn(taker):
                        paused[executor] = taker
                else:
                    self.seconds[taker.run_id] = executor.last_turn_seconds

    def _drain(self, running: dict[Any, tuple[RayExecutor, RemoteTaker]], ready: list[Any]) -> None:
        """What the turns still training have logged reaches the stores (within POLL_SECONDS);
        an executor lost meanwhile leaves the running turns (its runs continue elsewhere)."""
        for ref, (executor, _) in list(running.items()):
            if ref in ready:
                continue  # its answer carries the rest
            try:
                executor.drain_turn()
            except ExecutorLost:
                del running[ref]
                self.controller.executor_lost(executor)


def parallel_rounds(placement: Placement | None = None) -> Callable[[Any, LoopHooks], None]:
    """A `RunController.round_loop` that trains on every executor at once (module docstring);
    placement: default `BalancedPlacement`. The loop of the last fit is `parallel_rounds.last`."""

    def loop(controller: Any, hooks: LoopHooks) -> None:
        rounds = ParallelRounds(controller, placement or BalancedPlacement())
        loop.last = rounds
        rounds.run(hooks)

    loop.last = None
    return loop


__all__ = ["POLL_SECONDS", "ParallelRounds", "parallel_rounds"]
