"""The chunk-round loop (time-sliced execution), typed against the `TurnTaker` protocol.

    round = 1
    apply pending commands
    while the controller has turn-takers (runs that are NEW or ONGOING):
        for taker in the takers that have completed fewer than `round` chunks (run-id order):
            if it still wants a turn: give it the turn   # it trains until it completes a chunk,
                                                         # or ends; commands that arrive meanwhile
                                                         # apply at its next optimizer step
            apply pending commands                       # seam 1: stop / resume / delete / clone
            hooks.between_turns(controller)
        hooks.round_end(controller, round)               # seam 2: automatic searches
        apply pending commands                           # what they decided takes effect now
        round += 1

The set of takers is read again every round, so runs join (clones, resumed runs) and leave
(stopped, deleted, finished) while the sweep trains. A taker whose effective batch is larger
than a chunk may complete several chunks in one turn; it then sits out until the round
number catches up, so runs that started together stay aligned on the same data. A run that
joins later (a cold clone, a run resumed after a pause) takes one chunk per round from where
it is, like every other run: nobody waits for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class TurnTaker(Protocol):
    """What the loop schedules: one time-sliced run today (a fused cohort later)."""

    run_id: int
    chunks_done: int


class Controller(Protocol):
    def turn_takers(self) -> list[Any]: ...

    def wants_turn(self, taker: Any) -> bool: ...

    def take_turn(self, taker: Any, upcoming: Sequence[Any]) -> None: ...

    def apply_commands(self) -> None: ...


@dataclass
class LoopHooks:
    """Callables run between turns and at the end of each round (in the controller's thread)."""

    between_turns: list[Callable[[Controller], None]] = field(default_factory=list)
    round_end: list[Callable[[Controller, int], None]] = field(default_factory=list)


def run_rounds(controller: Controller, hooks: LoopHooks | None = None) -> None:
    """Run chunk rounds until no run wants a turn (module docstring)."""
    hooks = hooks or LoopHooks()
    round_number = 1
    controller.apply_commands()
    while takers := controller.turn_takers():
        due = [taker for taker in takers if taker.chunks_done < round_number]
        for index, taker in enumerate(due):
            if controller.wants_turn(taker):
                # The turns after this one: the rest of this round, then (about) the next round.
                controller.take_turn(taker, due[index + 1 :] + takers)
            controller.apply_commands()
            for hook in hooks.between_turns:
                hook(controller)
        for hook in hooks.round_end:
            hook(controller, round_number)
        controller.apply_commands()
        round_number += 1
