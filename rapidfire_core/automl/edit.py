"""Clone-modify: a run's config with the user's edits, validated exactly as `run_fit` validates.

    spec2 = edit_spec(spec, {"learning_rate": 1e-4, "peft.r": 16, "train.lr_scheduler_type": "cosine"})

A change's key names a knob (see `flatten.py`):

- ``train.<field>`` / ``peft.<field>``: a field of the run's training / LoRA config;
- a bare ``<field>``: the training config's field if it has one, else the LoRA config's
  (a name both accept, such as ``lora_dropout``-like clashes, must be written in full);
- an RFModelConfig field (``model_name``, ``generation_config``, ...), or a dotted key into
  one of its dicts (``model_kwargs.torch_dtype``).

A value must be concrete (no ``List``/``Range``): a clone is one run. The edited config goes
through `prepare_run` and `check_run` (TRL's and PEFT's own checks included); any problem is
a ConfigError that names the change and the field, and the original spec is untouched. The
clone keeps the parent's functions (formatting, metrics, rewards): they are not knobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rapidfire_core.automl.flatten import flatten_knobs
from rapidfire_core.automl.knobs import List, Range
from rapidfire_core.automl.model_config import RFModelConfig
from rapidfire_core.automl.search import RunSpec
from rapidfire_core.automl.validate import check_run, prepare_run
from rapidfire_core.errors import ConfigError

_PREFIXES = {"train": "training_args", "peft": "peft_config"}


def resolve_knob(mc: RFModelConfig, key: str) -> tuple[str, list[str]]:
    """(the RFModelConfig field holding the knob, the path inside it) for a change's key.

    ("training_args", ["learning_rate"]) for "learning_rate" or "train.learning_rate";
    ("model_kwargs", ["torch_dtype"]) for "model_kwargs.torch_dtype"; ("model_name", []) ...
    """
    head, _, rest = key.partition(".")
    if head in _PREFIXES and rest:
        return _PREFIXES[head], [rest]
    if head in RFModelConfig.FIELDS:
        return head, rest.split(".") if rest else []
    owners = [
        field
        for field in ("training_args", "peft_config")
        if getattr(mc, field) is not None and type(getattr(mc, field))._rf_spec().accepts(key)
    ]
    if len(owners) == 1:
        return owners[0], [key]
    if len(owners) > 1:
        raise ConfigError(f"change {key!r} is ambiguous: write 'train.{key}' or 'peft.{key}'")
    known = "training config" + (" or LoRA config" if mc.peft_config is not None else "")
    raise ConfigError(
        f"change {key!r}: not a field of the run's {known} nor of RFModelConfig "
        "(use 'train.<field>', 'peft.<field>' or an RFModelConfig field)"
    )


def _set(mc: RFModelConfig, key: str, value: Any) -> None:
    field, path = resolve_knob(mc, key)
    if field in _PREFIXES.values():
        cfg = getattr(mc, field)
        if cfg is None:
            raise ConfigError(f"change {key!r}: the run has no {field} (it trains without a LoRA adapter)")
        setattr(cfg, path[0], value)  # the RF config checks the name and the type
        return
    if not path:
        setattr(mc, field, value)
        return
    container = dict(getattr(mc, field) or {})
    node = container
    for part in path[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[path[-1]] = value
    setattr(mc, field, container)


def edit_spec(spec: RunSpec, changes: Mapping[str, Any]) -> RunSpec:
    """The run `spec` with `changes` applied and validated (module docstring)."""
    if not isinstance(changes, Mapping):
        raise ConfigError(f"changes must be a mapping of knob name -> value, got {type(changes).__name__}")
    mc = spec.model_config.copy()
    for key, value in changes.items():
        if isinstance(value, (List, Range)):
            raise ConfigError(
                f"change {key!r}: a clone is one run, give one value (not {type(value).__name__})"
            )
        try:
            _set(mc, key, value)
        except ConfigError as exc:
            raise ConfigError(f"clone change {key}={value!r}: {exc}") from None
    try:
        prepare_run(mc, spec.trainer_type)
        check_run(mc, spec.trainer_type)
    except ConfigError as exc:
        raise ConfigError(f"clone with changes {dict(changes)!r}: {exc}") from None
    except (TypeError, ValueError) as exc:  # TRL's / PEFT's own checks
        raise ConfigError(f"clone with changes {dict(changes)!r}: {type(exc).__name__}: {exc}") from None
    return RunSpec(spec.trainer_type, mc, flatten_knobs(mc))
