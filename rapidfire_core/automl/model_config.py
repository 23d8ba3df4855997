"""``RFModelConfig``: one model + adapter + trainer configuration (fields as in RapidFire AI).

Fields, in declaration order (the grid-expansion order, see ``search.py``)::

    model_name, tokenizer, tokenizer_kwargs, formatting_func, compute_metrics,
    peft_config, training_args, model_type, model_kwargs, ref_model_name,
    ref_model_type, ref_model_kwargs, reward_funcs, generation_config, num_gpus,
    callbacks

``callbacks``: ``transformers.TrainerCallback`` instances or subclasses (one, or a list), passed
to the run's trainer before the training config's own ``callbacks``; each run gets its own copy
(``rapidfire_core.trainers.user_callbacks``). A ``List`` of lists chooses between sets.

Any field may hold a ``List`` (``peft_config=List([RFLoraConfig(r=8), RFLoraConfig(r=32)])``),
and knobs may sit deeper (inside ``model_kwargs`` values, inside the RF configs). Types are
checked at construction and on assignment, knob-aware; unknown names raise ``ConfigError``
with a suggestion.

``model_config["model_name"]`` works (the seeds' ``create_model(model_config)`` indexes
it); ``to_dict()`` gives every field, with ``None`` ``*_kwargs`` as ``{}`` so that
``**model_config["model_kwargs"]`` always works.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import peft
import trl
from transformers import TrainerCallback

from rapidfire_core.automl.knobs import clone_value
from rapidfire_core.automl.rf_config import type_error, unknown_field_error
from rapidfire_core.automl.typecheck import matches

_RewardFunc = Callable | str
_Callback = TrainerCallback | type[TrainerCallback]
CALLBACKS_ANNOTATION = _Callback | list[_Callback] | tuple[_Callback, ...] | None
_FIELDS: dict[str, Any] = {
    "model_name": str | os.PathLike | None,
    "tokenizer": Any,  # a hub id / path, or a tokenizer object
    "tokenizer_kwargs": dict | None,
    "formatting_func": Callable | None,
    "compute_metrics": Callable | None,
    "peft_config": peft.LoraConfig | None,
    "training_args": trl.SFTConfig | trl.DPOConfig | trl.GRPOConfig | None,
    "model_type": str | None,
    "model_kwargs": dict | None,
    "ref_model_name": str | os.PathLike | None,
    "ref_model_type": str | None,
    "ref_model_kwargs": dict | None,
    "reward_funcs": _RewardFunc | list[_RewardFunc] | tuple[_RewardFunc, ...] | None,
    "generation_config": Any,  # dict of generate() kwargs or a transformers GenerationConfig
    "num_gpus": int | None,
    "callbacks": CALLBACKS_ANNOTATION,
}
_DEFAULTS: dict[str, Any] = {name: None for name in _FIELDS} | {"model_type": "causal_lm"}
KWARGS_FIELDS = ("tokenizer_kwargs", "model_kwargs", "ref_model_kwargs")


class RFModelConfig:
    """A model configuration for a search (see the module docstring)."""

    _rf_is_config = True
    FIELDS = tuple(_FIELDS)

    def __init__(
        self,
        model_name: str | os.PathLike | None = None,
        tokenizer: Any = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        formatting_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        peft_config: Any = None,
        training_args: Any = None,
        model_type: str | None = "causal_lm",
        model_kwargs: dict[str, Any] | None = None,
        ref_model_name: str | os.PathLike | None = None,
        ref_model_type: str | None = None,
        ref_model_kwargs: dict[str, Any] | None = None,
        reward_funcs: Any = None,
        generation_config: Any = None,
        num_gpus: int | None = None,
        callbacks: Any = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise unknown_field_error(next(iter(unknown)), "RFModelConfig", _FIELDS)
        values = dict(locals())
        for name in _FIELDS:
            self._rf_set(name, values[name])

    def _rf_set(self, name: str, value: Any) -> None:
        if name not in _FIELDS:
            raise unknown_field_error(name, "RFModelConfig", _FIELDS)
        if not matches(value, _FIELDS[name]):
            raise type_error(name, "RFModelConfig", _FIELDS[name], value)
        object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._rf_set(name, value)

    # -- knob protocol (see rf_config.RFConfigBase) ------------------------------------
    def _rf_knob_fields(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in _FIELDS]

    def _rf_replace(self, updates: dict[str, Any]) -> RFModelConfig:
        new = self.copy()
        for name, value in updates.items():
            object.__setattr__(new, name, value)
        return new

    def copy(self) -> RFModelConfig:
        """An independent deep copy; callables (formatting/metric/reward functions) are shared."""
        new = object.__new__(RFModelConfig)
        memo: dict = {}
        for name, value in self.__dict__.items():
            object.__setattr__(new, name, clone_value(value, memo))
        return new

    def __copy__(self) -> RFModelConfig:
        return self.copy()

    def __deepcopy__(self, memo: dict) -> RFModelConfig:
        return self.copy()

    # -- dict-like access ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field by name; ``None`` ``*_kwargs`` fields are ``{}`` (safe to ``**``-splat)."""
        out = {name: getattr(self, name) for name in _FIELDS}
        for name in KWARGS_FIELDS:
            if out[name] is None:
                out[name] = {}
        return out

    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in _FIELDS

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in _FIELDS else default

    def keys(self) -> tuple[str, ...]:
        return self.FIELDS

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def user_kwargs(self) -> dict[str, Any]:
        """Fields whose value differs from the default, in declaration order."""
        return {
            n: getattr(self, n)
            for n in _FIELDS
            if getattr(self, n) is not _DEFAULTS[n] and not _eq(getattr(self, n), _DEFAULTS[n])
        }

    def __repr__(self) -> str:
        return "RFModelConfig(" + ", ".join(f"{k}={v!r}" for k, v in self.user_kwargs().items()) + ")"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RFModelConfig):
            return NotImplemented
        return all(_eq(getattr(self, n), getattr(other, n)) for n in _FIELDS)

    __hash__ = None  # type: ignore[assignment]


def _eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - exotic __eq__
        return a is b


__all__ = ["RFModelConfig"]
