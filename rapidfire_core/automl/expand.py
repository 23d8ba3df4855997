"""Turning a knob-bearing value into concrete values: grid enumeration and random sampling.

Both walk the same structure, recursively:

- ``List``            grid: the concatenation of each element's expansion, in List order;
                      random: one element chosen, then sampled itself
- ``Range``           grid: ``Range.grid()`` (ConfigError for a continuous range);
                      random: ``Range.sample(rng)``
- an RF config /      its knob fields (RF configs: the user-set fields; RFModelConfig: all
  RFModelConfig       fields) in declaration order; grid: the cartesian product, the first
                      field varying slowest (``itertools.product``); random: each field
                      sampled in that order
- ``dict``            values in key order, as for config fields
- ``list`` / ``tuple`` elements in order, as for config fields
- anything else       itself

So for ``List([cfg_a, cfg_b])`` the grid is cfg_a's combinations then cfg_b's; within a
config, the earlier field is the outer loop. A value without knobs is returned as is
(callers copy); the random draw order is fixed, so a seed reproduces the draws.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from rapidfire_core.automl.knobs import List, Range
from rapidfire_core.automl.rf_config import has_knob
from rapidfire_core.errors import ConfigError


def _is_config(value: Any) -> bool:
    return getattr(value, "_rf_is_config", False)


def grid(value: Any, path: str = "") -> list[Any]:
    """Every concrete combination of ``value`` (module docstring), in grid order."""
    if not has_knob(value):
        return [value]
    if isinstance(value, List):
        out: list[Any] = []
        for i, element in enumerate(value.values):
            out.extend(grid(element, f"{path}[{i}]"))
        return out
    if isinstance(value, Range):
        try:
            return value.grid()
        except ConfigError as exc:
            raise ConfigError(f"{path or 'value'}: {exc}") from None
    if _is_config(value):
        fields = value._rf_knob_fields()
        names = [n for n, _ in fields]
        options = [grid(v, f"{path}.{n}" if path else n) for n, v in fields]
        combos = itertools.product(*options)
        return [value._rf_replace(dict(zip(names, combo, strict=True))) for combo in combos]
    if isinstance(value, dict):
        keys = list(value)
        options = [grid(value[k], f"{path}[{k!r}]") for k in keys]
        return [type(value)(zip(keys, combo, strict=True)) for combo in itertools.product(*options)]
    if isinstance(value, (list, tuple)):
        options = [grid(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return [type(value)(combo) for combo in itertools.product(*options)]
    return [value]


def sample(value: Any, rng: random.Random) -> Any:
    """One concrete draw of ``value`` (module docstring) using ``rng``."""
    if not has_knob(value):
        return value
    if isinstance(value, List):
        return sample(rng.choice(value.values), rng)
    if isinstance(value, Range):
        return value.sample(rng)
    if _is_config(value):
        return value._rf_replace({n: sample(v, rng) for n, v in value._rf_knob_fields()})
    if isinstance(value, dict):
        return type(value)((k, sample(v, rng)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(sample(v, rng) for v in value)
    return value


def fingerprint(value: Any) -> Any:
    """A hashable structural key of a concrete value (random search de-duplication)."""
    if _is_config(value):
        return (type(value).__name__, tuple((n, fingerprint(v)) for n, v in value._rf_knob_fields()))
    if isinstance(value, dict):
        return ("dict", tuple((repr(k), fingerprint(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(fingerprint(v) for v in value))
    if isinstance(value, float):
        return ("float", value.hex())
    if callable(value) and not isinstance(value, type):
        return ("callable", id(value))
    return (type(value).__name__, repr(value))


__all__ = ["fingerprint", "grid", "sample"]
