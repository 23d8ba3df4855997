"""The params a run's trackers record: the config the run used, and what was typed where it differs.

A user's config is changed on its way to the trainer (``automl/translate.py``: ``fp16=True`` is
False on a CPU, ``optim="paged_adamw_8bit"`` is ``adamw_torch``; ``trainers/model_kwargs.py``:
``torch_dtype=torch.bfloat16`` is float32 on a CPU). For each knob (``RunSpec.knobs``):

    <knob>          the value the run used: ``train.<field>`` from the run's built TRL config,
                    ``model_kwargs.<key>`` from the kwargs ``create_model`` received ("dropped"
                    when the key was removed), any other knob as typed
    typed.<knob>    the typed value, only where the two differ

plus ``train.<field>`` for each field the translation set that no knob names (a legacy field's
new name: ``warmup_ratio`` -> ``train.warmup_steps``; the CPU fallbacks ``train.use_cpu``,
``train.bf16``) and ``model_kwargs.<key>`` for a key it added (``quantization_config``). A
legacy knob that the translation carried to another field (``train.warmup_ratio``) stays as
typed; one it dropped or ignored, as its warning said (``train.max_prompt_length`` for GRPO,
``train.model_adapter_name``), is recorded as "dropped" (and the typed value beside it).
"""

from __future__ import annotations

import re
from typing import Any

from rapidfire_core.automl.flatten import jsonable

TYPED_PREFIX = "typed."
DROPPED = "dropped"
_MISSING = object()


def _walk(value: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def run_params(
    knobs: dict[str, Any],
    trainer_args: Any,
    translated_fields: list[str],
    typed_model_kwargs: dict[str, Any],
    used_model_kwargs: dict[str, Any],
    dropped_fields: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Any]:
    """The params of one built run (module docstring).

    trainer_args: the TRL config its trainer holds; translated_fields: the TRL fields the training
    config's translation passes (``RF*Config.trl_kwargs()`` keys); typed/used_model_kwargs: the
    model kwargs as typed and as ``create_model`` received them; dropped_fields: the legacy
    training fields the translation dropped or ignored."""
    used_kwargs = jsonable(used_model_kwargs)
    params: dict[str, Any] = {}
    named_fields: set[str] = set()
    for key, typed in knobs.items():
        section, _, rest = key.partition(".")
        used: Any = typed
        if section == "train" and rest:
            field, *path = rest.split(".")
            named_fields.add(field)
            if field in dropped_fields:  # checked first: TRL may keep a deprecated attribute
                used = DROPPED
            elif hasattr(trainer_args, field):
                found = _walk(jsonable(getattr(trainer_args, field)), path)
                used = typed if found is _MISSING else found
        elif section == "model_kwargs" and rest:
            found = _walk(used_kwargs, rest.split("."))
            used = DROPPED if found is _MISSING else found
        params[key] = used
        if used != typed:
            params[TYPED_PREFIX + key] = typed
    for field in translated_fields:
        if field not in named_fields and hasattr(trainer_args, field):
            params[f"train.{field}"] = jsonable(getattr(trainer_args, field))
    for name, value in used_kwargs.items():
        if name not in typed_model_kwargs:
            params[f"model_kwargs.{name}"] = value
    return params


def spec_params(spec: Any, knobs: dict[str, Any], trainer_args: Any) -> dict[str, Any]:
    """`run_params` of a run built from `spec` (a `RunSpec`) whose trainer holds `trainer_args`."""
    from rapidfire_core.automl.translate import gpu_available
    from rapidfire_core.trainers.model_kwargs import effective_model_kwargs

    typed_kwargs = spec.create_model_dict().get("model_kwargs") or {}
    translated, messages = spec.model_config.training_args.trl_kwargs()
    used_kwargs = effective_model_kwargs(typed_kwargs, gpu_available())
    # The translation's notes name the fields they drop or ignore first: "RFDPOConfig: a=1, b=2 dropped: ...".
    dropped = set()
    for message in messages:
        head = re.split(r" (?:dropped|ignored)\b", message, maxsplit=1)
        if len(head) == 2:
            dropped.update(re.findall(r"(?:^|, |: )(\w+)=", head[0]))
    return run_params(knobs, trainer_args, list(translated), typed_kwargs, used_kwargs, dropped)


__all__ = ["DROPPED", "TYPED_PREFIX", "run_params", "spec_params"]
