"""Search-space knobs: ``List`` (categorical) and ``Range`` (numeric).

A knob can stand in for any config value, at any depth: a field of an RF config, a value
of a ``model_kwargs`` dict, an element of a plain list, even a whole ``RFModelConfig``.

Grid search (``RFGridSearch``) enumerates:

- ``List([a, b, c])``            -> a, b, c (in order; a knob inside an element expands too)
- ``Range(s, e, num_points=n)``  -> n points from s to e inclusive, linear, or geometric when
  ``log=True``; for ``dtype="int"`` points are rounded and duplicates dropped
- ``Range(s, e, step=k)``        -> s, s+k, s+2k, ... <= e
- ``Range(s, e)``                -> ConfigError: a continuous range has no grid

Random search (``RFRandomSearch``) draws, with the search's own ``random.Random(seed)``:

- ``List``   -> one element uniformly
- ``Range``  -> uniform on [s, e] (``log=True``: log-uniform, i.e. ``exp(U(log s, log e))``);
  ``dtype="int"`` draws an integer (log: rounded log-uniform); ``step`` draws one of the
  step points uniformly; ``num_points`` is a grid-only setting and is ignored here.
"""

from __future__ import annotations

import copy
import math
import numbers
import random as _random
from typing import Any

from rapidfire_core.errors import ConfigError

_DTYPES = {None: None, "int": "int", "float": "float", int: "int", float: "float"}


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class List:
    """A categorical knob: one of ``values``.

    ``values`` is a non-empty python list (or tuple). Elements may be anything a config
    field accepts, including other knobs and whole configs (``List([RFLoraConfig(...), ...])``).
    """

    __slots__ = ("values",)

    def __init__(self, values: list[Any]) -> None:
        if isinstance(values, (List, Range)) or not isinstance(values, (list, tuple)):
            got = f"{type(values).__name__}: {values!r}"
            raise ConfigError(f"List expects a python list of values, got {got}")
        if len(values) == 0:
            raise ConfigError("List expects at least one value, got an empty list")
        self.values = list(values)

    def sample(self, rng: _random.Random | None = None) -> Any:
        """One element chosen uniformly (``rng`` defaults to the ``random`` module)."""
        return (rng or _random).choice(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, List) and other.values == self.values

    __hash__ = None  # mutable container semantics

    def __repr__(self) -> str:
        return f"List({self.values!r})"

    def __deepcopy__(self, memo: dict) -> List:
        return List([clone_value(v, memo) for v in self.values])


class Range:
    """A numeric knob: a value in ``[start, end]`` (both inclusive).

    Args:
        start, end: bounds, ``start <= end``.
        dtype: ``"int"`` / ``"float"`` (or the types ``int`` / ``float``); inferred as int
            when both bounds are ints, float otherwise.
        log: sample / space points geometrically; requires ``start > 0``.
        step: discretisation step (grid: every step point; random: one of them).
        num_points: number of grid points (grid search only).

    The signature keeps RapidFire AI's order ``Range(start, end, dtype, log, step)`` so
    positional calls port unchanged; ``num_points`` is ours.
    """

    __slots__ = ("start", "end", "dtype", "log", "step", "num_points")

    def __init__(
        self,
        start: float,
        end: float,
        dtype: str | type | None = None,
        log: bool = False,
        step: float | None = None,
        num_points: int | None = None,
    ) -> None:
        if not (_is_number(start) and _is_number(end)):
            raise ConfigError(f"Range bounds must be numbers, got start={start!r}, end={end!r}")
        if dtype not in _DTYPES:
            raise ConfigError(f"Range dtype must be 'int' or 'float', got {dtype!r}")
        resolved = _DTYPES[dtype]
        if resolved is None:
            both_int = isinstance(start, numbers.Integral) and isinstance(end, numbers.Integral)
            resolved = "int" if both_int else "float"
        if resolved == "int":
            if float(start) != int(start) or float(end) != int(end):
                got = f"start={start!r}, end={end!r}"
                raise ConfigError(f"Range(dtype='int') needs integral bounds, got {got}")
            start, end = int(start), int(end)
        else:
            start, end = float(start), float(end)
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ConfigError(f"Range bounds must be finite, got start={start!r}, end={end!r}")
        if start > end:
            raise ConfigError(f"Range needs start <= end, got start={start!r}, end={end!r}")
        if not isinstance(log, bool):
            raise ConfigError(f"Range log must be a bool, got {log!r}")
        if log and start <= 0:
            raise ConfigError(f"Range(log=True) needs start > 0, got start={start!r}")
        if step is not None:
            if log:
                raise ConfigError("Range: log=True and step are mutually exclusive")
            if not _is_number(step) or step <= 0:
                raise ConfigError(f"Range step must be a positive number, got {step!r}")
            if resolved == "int" and float(step) != int(step):
                raise ConfigError(f"Range(dtype='int') needs an integral step, got {step!r}")
        if num_points is not None:
            if isinstance(num_points, bool) or not isinstance(num_points, numbers.Integral) or num_points < 1:
                raise ConfigError(f"Range num_points must be a positive int, got {num_points!r}")
            if step is not None:
                raise ConfigError("Range: num_points and step are mutually exclusive")
        self.start = start
        self.end = end
        self.dtype = resolved
        self.log = log
        self.step = step
        self.num_points = None if num_points is None else int(num_points)

    # -- grid ------------------------------------------------------------------------
    @property
    def is_discrete(self) -> bool:
        """True when the range has a finite grid (``num_points`` or ``step`` given)."""
        return self.num_points is not None or self.step is not None

    def grid(self) -> list[float | int]:
        """The grid points (see the module docstring); ConfigError for a continuous range."""
        if self.step is not None:
            n = int(math.floor((self.end - self.start) / self.step + 1e-9))
            points = [self.start + k * self.step for k in range(n + 1)]
        elif self.num_points is not None:
            n = self.num_points
            if n == 1:
                points = [self.start]
            elif self.log:
                lo, hi = math.log(self.start), math.log(self.end)
                points = [math.exp(lo + (hi - lo) * k / (n - 1)) for k in range(n)]
                points[0], points[-1] = self.start, self.end  # exact endpoints, no 0.00099999
            else:
                points = [self.start + (self.end - self.start) * k / (n - 1) for k in range(n)]
                points[-1] = self.end
        else:
            raise ConfigError(
                f"{self!r} is continuous and has no grid: give num_points=... (or step=...) to use it "
                "in RFGridSearch, or use RFRandomSearch"
            )
        return self._cast_unique(points)

    def _cast_unique(self, points: list[float]) -> list[float | int]:
        if self.dtype == "float":
            return [float(p) for p in points]
        out: list[int] = []
        for p in points:
            v = int(round(p))
            if v not in out:
                out.append(v)
        return out

    # -- random ----------------------------------------------------------------------
    def sample(self, rng: _random.Random | None = None) -> float | int:
        """One random value (see the module docstring)."""
        rng = rng or _random
        if self.step is not None:
            n = int(math.floor((self.end - self.start) / self.step + 1e-9))
            v = self.start + rng.randint(0, n) * self.step
            return int(v) if self.dtype == "int" else float(v)
        if self.log:
            v = math.exp(rng.uniform(math.log(self.start), math.log(self.end)))
            if self.dtype == "int":
                return min(max(int(round(v)), self.start), self.end)
            return min(max(v, self.start), self.end)
        if self.dtype == "int":
            return rng.randint(self.start, self.end)
        return rng.uniform(self.start, self.end)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Range) and all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    __hash__ = None

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={getattr(self, name)!r}"
            for name, default in (("log", False), ("step", None), ("num_points", None))
            if getattr(self, name) != default
        )
        return f"Range({self.start!r}, {self.end!r}, dtype={self.dtype!r}{extra})"

    def __deepcopy__(self, memo: dict) -> Range:
        new = object.__new__(Range)
        for name in self.__slots__:
            object.__setattr__(new, name, getattr(self, name))
        return new


def is_knob(value: Any) -> bool:
    """True for a ``List`` or ``Range``."""
    return isinstance(value, (List, Range))


def clone_value(value: Any, memo: dict | None = None) -> Any:
    """Deep copy that shares callables (functions, reward models, metric fns) and classes.

    Containers, knobs and configs are copied; a function, a callable object, a class or a
    trainer callback is the same object in the copy (copying a reward model or a closure is
    never wanted; each run makes its own copy of a callback when its trainer is built).
    """
    if memo is None:
        memo = {}
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return value
    if type(value) is dict:
        return {k: clone_value(v, memo) for k, v in value.items()}
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(clone_value(v, memo) for v in value)
    if isinstance(value, (List, Range)):
        return copy.deepcopy(value, memo)
    if getattr(value, "_rf_is_config", False):
        return value.copy()
    if isinstance(value, type) or callable(value) or _is_trainer_callback(value):
        return value
    return copy.deepcopy(value, memo)


def _is_trainer_callback(value: Any) -> bool:
    from transformers import TrainerCallback

    return isinstance(value, TrainerCallback)


__all__ = ["List", "Range", "clone_value", "is_knob"]
