"""``RFConfigBase``: the behaviour shared by RFLoraConfig, RFSFTConfig, RFDPOConfig, RFGRPOConfig.

An RF config is a real subclass of a library dataclass (``peft.LoraConfig``,
``trl.SFTConfig``, ...) so ``isinstance(cfg, trl.SFTConfig)`` holds, but its ``__init__``
never runs the library's ``__init__`` / ``__post_init__`` (they would reject a ``List``).
Instead:

- every init field of the library dataclass is stored on the instance: its default (or a
  fresh ``default_factory()``), overlaid by the user's keyword arguments;
- the names the user set are remembered, in the order set (``user_kwargs()``); only they
  are passed to the library at materialization, so the library keeps its own defaults;
- a keyword must be a field of the library class, a *legacy* field we translate (see
  ``translate.py``) or an engine field (``configs.ENGINE_FIELDS``: ``callbacks``), else
  ``ConfigError`` naming field, class and the closest names;
- a value must match the field's annotation (``typecheck.matches``); ``List`` / ``Range``
  are checked element-wise; a mismatch is a ``ConfigError`` naming field, class, expected
  and got;
- assignment after construction (``cfg.beta = 0.1``) goes through the same checks and
  marks the field user-set; ``copy()`` is an independent deep copy (callables shared);
- ``repr`` shows only the user-set fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import typing
from typing import Any, ClassVar

from rapidfire_core.automl.knobs import List, Range, clone_value
from rapidfire_core.automl.typecheck import describe, describe_value, matches
from rapidfire_core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """The accepted keywords of one RF config class."""

    annotations: dict[str, Any]  # library field -> resolved annotation, declaration order
    defaults: dict[str, Any]  # library field -> zero-arg callable giving its default
    legacy: dict[str, Any]  # accepted legacy field -> annotation (absent from the library class)

    def accepts(self, name: str) -> bool:
        return name in self.annotations or name in self.legacy

    def annotation(self, name: str) -> Any:
        return self.annotations[name] if name in self.annotations else self.legacy[name]

    def order(self, name: str) -> int:
        names = list(self.annotations) + list(self.legacy)
        return names.index(name)


def _default_factory(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory
    if f.default is dataclasses.MISSING:
        return lambda: None
    value = f.default
    return lambda: value


def unknown_field_error(name: str, cls_name: str, known: typing.Iterable[str]) -> ConfigError:
    """``ConfigError`` for an unknown keyword, with "did you mean" suggestions."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"{cls_name}: unknown field {name!r}{hint}")


def type_error(name: str, cls_name: str, ann: Any, value: Any) -> ConfigError:
    return ConfigError(f"{cls_name}.{name}: expected {describe(ann)}, got {describe_value(value)}")


class RFConfigBase:
    """Mixin placed before the library class in the MRO (see the module docstring)."""

    _rf_parent: ClassVar[type]  # the library dataclass
    _rf_kind: ClassVar[str]  # "LoRA", "SFT", "DPO", "GRPO"
    _rf_is_config: ClassVar[bool] = True
    _rf_spec_cache: ClassVar[FieldSpec | None] = None

    # -- field spec ------------------------------------------------------------------
    @classmethod
    def _rf_legacy_fields(cls, library_fields: set[str]) -> dict[str, Any]:
        """Legacy keywords accepted on top of the library's fields (overridden per kind)."""
        return {}

    @classmethod
    def _rf_spec(cls) -> FieldSpec:
        spec = cls.__dict__.get("_rf_spec_cache")
        if spec is None:
            parent = cls._rf_parent
            hints = typing.get_type_hints(parent)
            fields = [f for f in dataclasses.fields(parent) if f.init]
            annotations = {f.name: hints.get(f.name, Any) for f in fields}
            defaults = {f.name: _default_factory(f) for f in fields}
            legacy = cls._rf_legacy_fields(set(annotations))
            spec = FieldSpec(annotations, defaults, legacy)
            cls._rf_spec_cache = spec
        return spec

    # -- construction ----------------------------------------------------------------
    def __init__(self, **kwargs: Any) -> None:
        # Deliberately not calling the library __init__ / __post_init__ (see module doc).
        spec = self._rf_spec()
        object.__setattr__(self, "_rf_user_set", [])
        for name, make_default in spec.defaults.items():
            object.__setattr__(self, name, make_default())
        problems = []
        for name, value in kwargs.items():
            try:
                self._rf_set(name, value)
            except ConfigError as exc:
                problems.append(str(exc))
        if len(problems) == 1:
            raise ConfigError(problems[0])
        if problems:
            head = f"{type(self).__name__}: {len(problems)} invalid fields"
            raise ConfigError(head + ":\n  " + "\n  ".join(problems))

    def _rf_set(self, name: str, value: Any) -> None:
        spec = self._rf_spec()
        cls_name = type(self).__name__
        if not spec.accepts(name):
            raise unknown_field_error(name, cls_name, list(spec.annotations) + list(spec.legacy))
        ann = spec.annotation(name)
        if not matches(value, ann):
            raise type_error(name, cls_name, ann, value)
        object.__setattr__(self, name, value)
        if name not in self._rf_user_set:
            self._rf_user_set.append(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._rf_set(name, value)

    @classmethod
    def from_library(cls, obj: Any) -> RFConfigBase:
        """Wrap a plain library config (already post-initialised) as an RF config.

        Fields whose value differs from the class default count as user-set; sets (peft
        turns ``target_modules`` lists into sets) become sorted lists.
        """
        if not isinstance(obj, cls._rf_parent):
            expected = cls._rf_parent.__name__
            raise ConfigError(f"{cls.__name__}.from_library expects a {expected}, got {type(obj).__name__}")
        new = cls()
        spec = cls._rf_spec()
        for name, make_default in spec.defaults.items():
            value = getattr(obj, name, None)
            if isinstance(value, (set, frozenset)):
                value = sorted(value, key=str)
            if _same(value, make_default()):
                continue
            object.__setattr__(new, name, clone_value(value))
            new._rf_user_set.append(name)
        new._rf_after_from_library(obj)
        return new

    def _rf_after_from_library(self, obj: Any) -> None:
        """Drop values the library derived in ``__post_init__`` that must not be re-passed."""

    # -- introspection ---------------------------------------------------------------
    def user_kwargs(self) -> dict[str, Any]:
        """The user-set fields and their (possibly knob) values, in the order set."""
        return {name: getattr(self, name) for name in self._rf_user_set}

    def is_user_set(self, name: str) -> bool:
        return name in self._rf_user_set

    def _rf_knob_fields(self) -> list[tuple[str, Any]]:
        """User-set fields in declaration order (library order, then legacy): the expansion order."""
        spec = self._rf_spec()
        return [(n, getattr(self, n)) for n in sorted(self._rf_user_set, key=spec.order)]

    def _rf_replace(self, updates: dict[str, Any]) -> RFConfigBase:
        """A copy with ``updates`` applied (values already validated as knob elements)."""
        new = self.copy()
        for name, value in updates.items():
            object.__setattr__(new, name, value)
            if name not in new._rf_user_set:
                new._rf_user_set.append(name)
        return new

    def copy(self) -> RFConfigBase:
        """An independent deep copy; callables (and classes) are shared, not copied."""
        new = object.__new__(type(self))
        memo: dict = {}
        for name, value in self.__dict__.items():
            object.__setattr__(new, name, clone_value(value, memo))
        return new

    def __copy__(self) -> RFConfigBase:
        return self.copy()

    def __deepcopy__(self, memo: dict) -> RFConfigBase:
        return self.copy()

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.user_kwargs().items())
        return f"{type(self).__name__}({inner})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        mine = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        theirs = {k: v for k, v in other.__dict__.items() if not k.startswith("_")}
        return mine == theirs and set(self._rf_user_set) == set(other._rf_user_set)

    __hash__ = None  # type: ignore[assignment]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, enum.Enum) and not isinstance(b, enum.Enum):
        a = a.value
    if isinstance(b, enum.Enum) and not isinstance(a, enum.Enum):
        b = b.value
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - exotic __eq__ (arrays): treat as different
        return False


def has_knob(value: Any) -> bool:
    """True when a ``List`` or ``Range`` occurs anywhere inside ``value``."""
    if isinstance(value, (List, Range)):
        return True
    if getattr(value, "_rf_is_config", False):
        return any(has_knob(v) for _, v in value._rf_knob_fields())
    if isinstance(value, dict):
        return any(has_knob(v) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(has_knob(v) for v in value)
    return False


def find_knob(value: Any, path: str) -> str | None:
    """Dotted path of the first knob inside ``value`` (None when concrete)."""
    if isinstance(value, (List, Range)):
        return path
    if getattr(value, "_rf_is_config", False):
        for name, v in value._rf_knob_fields():
            hit = find_knob(v, f"{path}.{name}" if path else name)
            if hit:
                return hit
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            hit = find_knob(v, f"{path}[{k!r}]")
            if hit:
                return hit
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            hit = find_knob(v, f"{path}[{i}]")
            if hit:
                return hit
    return None


__all__ = ["FieldSpec", "RFConfigBase", "find_knob", "has_knob", "type_error", "unknown_field_error"]
