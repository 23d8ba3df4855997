"""Check a value against a dataclass field annotation, knob-aware.

``matches(value, annotation)`` answers "would this field accept this value" for the
annotations TRL, transformers and peft use: ``int``, ``float`` (an int is fine), ``str``,
``bool``, ``None``, ``X | Y`` / ``Optional`` / ``Union``, ``Literal[...]``, enums (a member
or its value), ``list[T]`` / ``tuple[...]`` / ``dict[K, V]`` (element-wise), ``type[C]`` (a
subclass of C) and plain classes (``isinstance``). A ``List`` knob matches when every one of
its values matches; a ``Range`` matches when its bounds (in its dtype) do. Unknown annotation forms are
accepted rather than guessed at: the TRL materialization step still validates them.

Two leniencies follow what the libraries themselves accept:

- ``list[str]`` also takes a single ``str`` (TRL's DPOConfig wraps ``loss_type="sigmoid"``);
- a ``Literal`` string with a ``[placeholder]`` (peft's ``'pissa_niter_[number of iters]'``)
  matches any string with the text before the bracket as prefix.
"""

from __future__ import annotations

import collections.abc
import enum
import numbers
import os
import types
import typing
from typing import Any, Literal, Union

from rapidfire_core.automl.knobs import List, Range

_NoneType = type(None)


def matches(value: Any, ann: Any) -> bool:
    """True when a field annotated ``ann`` accepts ``value`` (knobs checked element-wise)."""
    if isinstance(value, List):
        return all(matches(v, ann) for v in value.values)
    if isinstance(value, Range):
        return matches(value.start, ann) and matches(value.end, ann)
    return _matches_concrete(value, ann)


def _matches_concrete(value: Any, ann: Any) -> bool:
    if ann is Any or ann is object or ann is typing.Any:
        return True
    if ann is None or ann is _NoneType:
        return value is None
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is Union or origin is types.UnionType:
        return any(_matches_concrete(value, a) for a in args)
    if origin is Literal:
        return any(_literal_match(value, lit) for lit in args)
    if ann is bool:
        return isinstance(value, bool) or type(value).__name__ == "bool_"
    if ann is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return isinstance(value, ann) or any(value == m.value for m in ann)
    if origin in (list, collections.abc.Sequence, collections.abc.MutableSequence):
        if args and args[0] is str and isinstance(value, str):
            return True  # str-or-list idiom (see module docstring)
        if not isinstance(value, (list, tuple)):
            return False
        return not args or all(matches(v, args[0]) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args, strict=True))
    if origin in (set, frozenset, collections.abc.Set):
        if not isinstance(value, (set, frozenset, list, tuple)):
            return False
        return not args or all(matches(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        if not isinstance(value, collections.abc.Mapping):
            return False
        if len(args) == 2:
            key_ann, value_ann = args
            keys_ok = all(matches(k, key_ann) for k in value)
            return keys_ok and all(matches(v, value_ann) for v in value.values())
        return True
    if origin is type:
        return isinstance(value, type) and (not args or issubclass(value, args[0]))
    if origin is collections.abc.Callable or ann is collections.abc.Callable:
        return callable(value)
    if ann is os.PathLike:
        return isinstance(value, os.PathLike)
    if ann in (list, tuple):
        return isinstance(value, (list, tuple))
    if isinstance(ann, type):
        return isinstance(value, ann)
    return True  # an annotation form we do not model: let the library decide


def _literal_match(value: Any, lit: Any) -> bool:
    if isinstance(lit, str) and isinstance(value, str):
        if value == lit:
            return True
        if "[" in lit and lit.endswith("]"):
            return value.startswith(lit[: lit.index("[")])
        return False
    return type(value) is type(lit) and value == lit


def describe(ann: Any) -> str:
    """Readable form of an annotation for error messages, e.g. ``int | None``."""
    if ann is None or ann is _NoneType:
        return "None"
    if ann is Any:
        return "Any"
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is Union or origin is types.UnionType:
        return " | ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        inner = ", ".join("..." if a is Ellipsis else describe(a) for a in args)
        return f"{name}[{inner}]" if args else name
    if isinstance(ann, type):
        if issubclass(ann, enum.Enum):
            return f"{ann.__name__} (or one of its values)"
        return ann.__name__
    return str(ann).replace("typing.", "")


def describe_value(value: Any, limit: int = 80) -> str:
    """``<type> <repr>`` of a value, truncated, for error messages."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


__all__ = ["describe", "describe_value", "matches"]
