"""Flatten a concrete RFModelConfig into ``{knob name: JSON-friendly value}``.

Keys (the ``RunSpec.knobs`` naming):

- ``model_name`` and every other RFModelConfig field that differs from its default, by
  its own name (``model_type``, ``formatting_func``, ``reward_funcs``, ...);
- dict-valued fields flattened with dots: ``model_kwargs.torch_dtype``,
  ``generation_config.max_new_tokens`` (nested dicts continue the dots);
- ``peft.<field>`` for each user-set field of the LoRA config (``peft.r``,
  ``peft.target_modules``), ``train.<field>`` for the training config
  (``train.learning_rate``, ``train.gradient_checkpointing_kwargs.use_reentrant``).

Values: None / bool / int / float / str as they are; enums by value; callables by
``__name__`` (``functools.partial`` by its function's name); lists and tuples as lists;
an object without a ``__str__`` / ``__repr__`` of its own (a trainer callback instance) by its
class name; ``torch.dtype`` and any other object as ``str(value)``.
"""

from __future__ import annotations

import enum
import functools
from typing import Any


def jsonable(value: Any) -> Any:
    """A JSON-friendly rendering of ``value`` (module docstring)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=str)
    if isinstance(value, functools.partial):
        return jsonable(value.func)
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    cls = type(value)
    if cls.__str__ is object.__str__ and cls.__repr__ is object.__repr__:
        return cls.__name__  # "<MyCallback object at 0x7f...>" would differ in every process
    return str(value)


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _put(out, f"{key}.{k}", v)
    else:
        out[key] = jsonable(value)


def flatten_knobs(model_config: Any) -> dict[str, Any]:
    """``RunSpec.knobs`` of a concrete RFModelConfig (module docstring)."""
    out: dict[str, Any] = {"model_name": jsonable(model_config.model_name)}
    for name, value in model_config.user_kwargs().items():
        if name in ("model_name", "peft_config", "training_args"):
            continue
        _put(out, name, value)
    for prefix, cfg in (("peft", model_config.peft_config), ("train", model_config.training_args)):
        if hasattr(cfg, "user_kwargs"):  # an RF config (a plain library config before prepare_run: skipped)
            for name, value in cfg.user_kwargs().items():
                _put(out, f"{prefix}.{name}", value)
    return out


__all__ = ["flatten_knobs", "jsonable"]
