"""Value rules: the ranges a field must be in, checked for every run before anything is trained.

The type of a field is checked when a config is made (``typecheck.py``), and the checks TRL,
transformers and PEFT make when their config is constructed run for every expanded run
(``validate.check_run``). What neither catches fails much later, after the model is loaded,
often with a message that does not name the field (``r=0``: a shape error inside PEFT;
``learning_rate=-1``: torch's optimizer; ``seed=-1``: numpy, when the trainer is built). Those
are the rules here, each stating what the library or torch will require::

    config      field                                  must be
    LoRA        r                                      an integer >= 1
                lora_alpha                             a number > 0 (scaling = lora_alpha / r)
                lora_dropout                           in [0, 1)
                rank_pattern / alpha_pattern values    as r / lora_alpha
    training    learning_rate                          a finite number >= 0
                per_device_{train,eval}_batch_size     an integer >= 1
                gradient_accumulation_steps            an integer >= 1
                max_steps                              -1 (train num_train_epochs) or an integer >= 1
                num_train_epochs                       a finite number >= 0, > 0 when max_steps is -1
                weight_decay, adam_epsilon             a finite number >= 0
                adam_beta1, adam_beta2                 in [0, 1)
                logging_steps, eval_steps              >= 0 (transformers refuses 0 where it is used)
                seed, data_seed                        an integer in [0, 2**32) (numpy's seed range)
    SFT, DPO    max_length                             None or an integer >= 1
    DPO         beta                                   a finite number > 0
    GRPO        beta, epsilon                          a finite number >= 0
                temperature                            a finite number > 0
                top_p                                  in (0, 1]
                max_completion_length, num_iterations  an integer >= 1
                steps_per_generation,                  None or an integer >= 1
                generation_batch_size

``None`` passes wherever the library's annotation allows it (``eval_steps``, ``data_seed``, ...).
``field_problems(cfg)`` returns ``[(field, message)]`` for one concrete RF config; the message
names the config class, the field and the value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_TRAINING = frozenset({"SFT", "DPO", "GRPO"})


def _int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(low: int) -> Callable[[Any, Any], bool]:
    return lambda v, cfg: _int(v) and v >= low


def _real_at_least(low: float, strict: bool = False) -> Callable[[Any, Any], bool]:
    return lambda v, cfg: _real(v) and (v > low if strict else v >= low)


def _unit(low_open: bool, high_open: bool) -> Callable[[Any, Any], bool]:
    def ok(v: Any, cfg: Any) -> bool:
        if not _real(v):
            return False
        return (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)

    return ok


def _pattern(check: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    return lambda v, cfg: all(check(x, cfg) for x in v.values())


def _max_steps(v: Any, cfg: Any) -> bool:
    return _int(v) and (v == -1 or v >= 1)


def _epochs(v: Any, cfg: Any) -> bool:
    if not _real(v) or v < 0:
        return False
    return v > 0 or (_int(cfg.max_steps) and cfg.max_steps >= 1)


def _seed(v: Any, cfg: Any) -> bool:
    return _int(v) and 0 <= v < 2**32


@dataclass(frozen=True)
class Rule:
    kinds: frozenset[str]  # the RF config kinds it applies to: "LoRA", "SFT", "DPO", "GRPO"
    field: str
    ok: Callable[[Any, Any], bool]  # ok(value, config)
    expected: str  # "an integer >= 1 (the LoRA rank)"


def _rules(kinds: set[str] | frozenset[str], check: Callable[[Any, Any], bool], expected: str, *fields: str):
    return [Rule(frozenset(kinds), name, check, expected) for name in fields]


RULES: list[Rule] = [
    *_rules({"LoRA"}, _int_at_least(1), "an integer >= 1 (the LoRA rank)", "r"),
    *_rules(
        {"LoRA"}, _real_at_least(0, strict=True), "a number > 0 (scaling = lora_alpha / r)", "lora_alpha"
    ),
    *_rules({"LoRA"}, _unit(False, True), "a probability in [0, 1)", "lora_dropout"),
    *_rules({"LoRA"}, _pattern(_int_at_least(1)), "a mapping to ranks >= 1", "rank_pattern"),
    *_rules({"LoRA"}, _pattern(_real_at_least(0, strict=True)), "a mapping to alphas > 0", "alpha_pattern"),
    *_rules(
        _TRAINING,
        _real_at_least(0),
        "a finite number >= 0 (the optimizer refuses a negative one)",
        "learning_rate",
    ),  # fmt: skip
    *_rules(
        _TRAINING,
        _int_at_least(1),
        "an integer >= 1",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
    ),  # fmt: skip
    *_rules(_TRAINING, _max_steps, "-1 (train num_train_epochs) or an integer >= 1", "max_steps"),
    *_rules(_TRAINING, _epochs, "a finite number >= 0, and > 0 unless max_steps >= 1", "num_train_epochs"),
    *_rules(_TRAINING, _real_at_least(0), "a finite number >= 0", "weight_decay", "adam_epsilon"),
    *_rules(
        _TRAINING, _unit(False, True), "in [0, 1) (the optimizer refuses others)", "adam_beta1", "adam_beta2"
    ),
    # 0 is legal for transformers where no step strategy uses it (eval_steps=0: logging_steps' value);
    # where one does, transformers refuses it itself. A negative interval it would take silently.
    *_rules(
        _TRAINING,
        _real_at_least(0),
        "a number >= 0 (a float < 1 is a fraction of the steps)",
        "logging_steps",
        "eval_steps",
    ),
    *_rules(_TRAINING, _seed, "an integer in [0, 2**32) (numpy's seed range)", "seed", "data_seed"),
    *_rules({"SFT", "DPO"}, _int_at_least(1), "None or an integer >= 1 (tokens)", "max_length"),
    *_rules({"DPO"}, _real_at_least(0, strict=True), "a finite number > 0", "beta"),
    *_rules({"GRPO"}, _real_at_least(0), "a finite number >= 0", "beta", "epsilon"),
    *_rules(
        {"GRPO"},
        _real_at_least(0, strict=True),
        "a finite number > 0 (generation samples with it)",
        "temperature",
    ),  # fmt: skip
    *_rules({"GRPO"}, _unit(True, False), "in (0, 1]", "top_p"),
    *_rules(
        {"GRPO"},
        _int_at_least(1),
        "an integer >= 1",
        "max_completion_length",
        "num_iterations",
        "steps_per_generation",
        "generation_batch_size",
    ),  # fmt: skip
]


def field_problems(cfg: Any) -> list[tuple[str, str]]:
    """``[(field, message)]`` for the fields of one concrete RF config that break a rule."""
    kind = getattr(type(cfg), "_rf_kind", None)
    cls = type(cfg).__name__
    problems = []
    for rule in RULES:
        if kind not in rule.kinds or not hasattr(cfg, rule.field):
            continue
        value = getattr(cfg, rule.field)
        if value is None or rule.ok(value, cfg):
            continue
        problems.append((rule.field, f"{cls}.{rule.field} must be {rule.expected}, got {value!r}"))
    return problems


__all__ = ["RULES", "Rule", "field_problems"]
