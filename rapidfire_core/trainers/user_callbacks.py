"""The user's own TRL callbacks (`RFModelConfig(callbacks=...)`, `RF*Config(callbacks=...)`).

Each run gets its own callbacks: a class is instantiated for the run (as the Trainer itself
does with a class), an instance is deep-copied for the run. So a stateful callback (a patience
counter, a best metric) keeps its state per run, exactly as when each config is trained alone
by a stock trainer, although the runs' trainers are interleaved in one process.

Each one sees the events stock TRL would emit for its run, and not the ones the engine adds:
the log and the evaluation forced at a chunk end where TRL would neither log nor evaluate
(`ChunkGate`) are not delivered (their `on_log`, `on_prediction_step` and `on_evaluate`), so a
callback that decides on eval metrics (early stopping) decides as it would under stock TRL.
Everything else is TRL's own: same arguments, same `TrainerState`, same `TrainerControl`
(which a callback may set as usual). One difference remains visible: `state.log_history`
holds the engine's chunk-end logs too.

A callback that raises ends its run (FAILED, with the callback's error); the other runs go on.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Protocol

from transformers import TrainerCallback

_EVENTS = tuple(name for name in vars(TrainerCallback) if name.startswith("on_"))
_EVAL_EVENTS = ("on_prediction_step", "on_evaluate")


class EngineEvents(Protocol):
    """Which of the trainer's current events the engine added (set by `ChunkGate`)."""

    engine_log: bool  # the training log of this step is the engine's chunk-end log
    engine_eval: bool  # the evaluation of this step is the engine's chunk-end evaluation


class UserCallback(TrainerCallback):
    """Forwards every event to `callback` except those the engine added (module docstring)."""

    def __init__(self, callback: TrainerCallback, engine: EngineEvents) -> None:
        self.callback = callback
        self.engine = engine

    def _engine_added(self, event: str, kwargs: dict[str, Any]) -> bool:
        if event in _EVAL_EVENTS:
            return self.engine.engine_eval
        if event == "on_log":
            logs = kwargs.get("logs") or {}
            if any(str(key).startswith("eval_") for key in logs):
                return self.engine.engine_eval
            return self.engine.engine_log and "loss" in logs
        return False

    def __repr__(self) -> str:
        return f"UserCallback({self.callback!r})"


def _forwarder(event: str):
    def forward(self: UserCallback, args, state, control, **kwargs):
        if self._engine_added(event, kwargs):
            return None
        return getattr(self.callback, event)(args, state, control, **kwargs)

    forward.__name__ = event
    return forward


for _event in _EVENTS:
    setattr(UserCallback, _event, _forwarder(_event))


def run_callbacks(callbacks: Iterable[Any], engine: EngineEvents) -> list[TrainerCallback]:
    """One run's own copies of the user's callbacks (classes instantiated, instances deep-copied),
    each wrapped so it sees stock TRL's events (module docstring).

    The Trainer warns when two callbacks share a class, so each wrapper gets a class of its own,
    named after the user's callback."""
    out = []
    for callback in callbacks:
        own = callback() if isinstance(callback, type) else copy.deepcopy(callback)
        name = type(own).__name__
        wrapper = type(f"UserCallback[{name}]", (UserCallback,), {})
        out.append(wrapper(own, engine))
    return out


def callback_list(value: Any) -> list[Any]:
    """A `callbacks` field's value as a list (None: none; one callback: a list of one)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]
