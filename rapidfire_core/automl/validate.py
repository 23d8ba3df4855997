"""Checks every expanded run before any training starts.

``prepare_run`` normalises one concrete RFModelConfig for a trainer type:

- ``training_args``: ``None`` becomes the trainer's default RF config; an RF config must be
  the trainer's (RFSFTConfig for "SFT", ...); a plain ``trl.SFTConfig`` / ``DPOConfig`` /
  ``GRPOConfig`` of the right kind is wrapped (``from_library``); anything else is an error;
- ``peft_config``: ``None``, an RFLoraConfig, or a plain ``peft.LoraConfig`` (wrapped);
- ``model_name`` is required; GRPO requires ``reward_funcs`` (a callable, a reward-model
  id, or a non-empty list of them).

``check_run`` then applies the value rules (``values.py``: ``r >= 1``, ``learning_rate >= 0``,
...) and refuses the settings TRL warns about and then fails on (``trl_rules.py``), checks
the user's callbacks, applies the GRPO batch rule (below) and materializes the run once
(``training_args.to_trl(output_dir=<tmp>, report_to="none")``, ``peft_config.to_peft()``) so TRL's
and peft's own validation errors surface now. Its errors are ``FieldErrors``: each problem
has a path inside the run's RFModelConfig (``peft_config.r``, ``training_args``, or
``training_args.warmup_steps`` when the library's message names one field the user set), so
``expand()`` can name it from the search's configs (``configs[1].peft_config.r``) and a clone
edit from its changes.

Callbacks (``RFModelConfig.callbacks`` and the training config's ``callbacks``): each is a
``transformers.TrainerCallback`` instance, which must survive ``copy.deepcopy`` (every run gets
its own copy, ``trainers.user_callbacks``), or a TrainerCallback subclass that can be made with
no arguments.

GRPO batch rule (TRL 1.x ``GRPOConfig.__post_init__``, one process): the generation batch
is ``generation_batch_size`` if set, else ``per_device_train_batch_size *
(steps_per_generation or gradient_accumulation_steps)``; it must be divisible by
``num_generations`` (every prompt's completions land in one generation batch). With an
eval strategy, ``per_device_eval_batch_size`` must be divisible by ``num_generations_eval
or num_generations``.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import tempfile
from typing import Any

import peft

from rapidfire_core.automl.configs import LIBRARY_TRAINING_CONFIGS, TRAINING_CONFIGS, RFLoraConfig
from rapidfire_core.automl.model_config import RFModelConfig
from rapidfire_core.automl.rf_config import RFConfigBase
from rapidfire_core.automl.trl_rules import divergent_setting_problems
from rapidfire_core.automl.values import field_problems
from rapidfire_core.errors import ConfigError

VALIDATION_OUTPUT_DIR = os.path.join(tempfile.gettempdir(), "rapidfire_core-validate")


class FieldErrors(ConfigError):
    """Problems of one run, each ``(path inside its RFModelConfig, message)``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{path}: {message}" for path, message in self.problems))

    def located(self, origin: str) -> list[str]:
        """Each problem as one line with its full path: ``configs[1].peft_config.r: ...``."""
        return [f"{origin}.{path}: {message}" for path, message in self.problems]


def prepare_run(mc: RFModelConfig, trainer_type: str) -> RFModelConfig:
    """Normalise ``mc`` in place for ``trainer_type`` (module docstring); returns it."""
    rf_cls, lib_cls = TRAINING_CONFIGS[trainer_type], LIBRARY_TRAINING_CONFIGS[trainer_type]
    ta = mc.training_args
    if ta is None:
        object.__setattr__(mc, "training_args", rf_cls())
    elif isinstance(ta, RFConfigBase) or not isinstance(ta, lib_cls):
        if type(ta) is not rf_cls:
            raise ConfigError(
                f"training_args is {type(ta).__name__} but trainer_type={trainer_type!r} needs "
                f"{rf_cls.__name__} (or trl.{lib_cls.__name__})"
            )
    else:
        object.__setattr__(mc, "training_args", rf_cls.from_library(ta))

    pc = mc.peft_config
    if isinstance(pc, peft.LoraConfig) and not isinstance(pc, RFLoraConfig):
        object.__setattr__(mc, "peft_config", RFLoraConfig.from_library(pc))
    elif pc is not None and not isinstance(pc, RFLoraConfig):
        got = type(pc).__name__
        raise ConfigError(f"peft_config must be an RFLoraConfig, a peft.LoraConfig or None, got {got}")

    if mc.model_name is None or (isinstance(mc.model_name, str) and not mc.model_name.strip()):
        raise ConfigError("RFModelConfig.model_name is required (a hub id or a local path)")
    if trainer_type == "GRPO":
        funcs = mc.reward_funcs
        funcs_list = list(funcs) if isinstance(funcs, (list, tuple)) else [funcs]
        if funcs is None or not funcs_list:
            raise ConfigError(
                "trainer_type='GRPO' needs RFModelConfig.reward_funcs "
                "(a callable, a reward-model id, or a list of them)"
            )
        for f in funcs_list:
            if not (callable(f) or isinstance(f, str)):
                raise ConfigError(f"RFModelConfig.reward_funcs: {f!r} is neither callable nor a model id")
    return mc


def check_grpo_batches(ta: Any) -> None:
    """The GRPO batch rule of the module docstring, with a message that shows the numbers."""
    cls = type(ta).__name__
    n_gen = ta.num_generations
    gbs, spg = ta.generation_batch_size, ta.steps_per_generation
    if gbs is not None and spg is not None:
        raise ConfigError(
            f"{cls}: set only one of generation_batch_size ({gbs}) and steps_per_generation ({spg})"
        )
    if gbs is not None:
        batch, expr = gbs, f"generation_batch_size ({gbs})"
    else:
        steps_name = "steps_per_generation" if spg is not None else "gradient_accumulation_steps"
        steps = spg if spg is not None else ta.gradient_accumulation_steps
        batch = ta.per_device_train_batch_size * steps
        per_device = ta.per_device_train_batch_size
        expr = f"per_device_train_batch_size ({per_device}) * {steps_name} ({steps}) = {batch}"
    if n_gen is not None and n_gen > 0 and batch % n_gen != 0:
        raise ConfigError(
            f"{cls}: the GRPO generation batch {expr} is not divisible by num_generations ({n_gen}); "
            f"each prompt's {n_gen} completions must fit in one generation batch"
        )
    eval_strategy = getattr(ta.eval_strategy, "value", ta.eval_strategy)
    if eval_strategy not in (None, "no"):
        check_grpo_eval_batches(ta)


def check_grpo_eval_batches(ta: Any) -> None:
    """GRPO evaluation batches hold whole prompt groups (checked whenever the run will evaluate:
    the engine evaluates after every chunk when an eval set is given)."""
    cls = type(ta).__name__
    n_eval = ta.num_generations_eval or ta.num_generations
    if n_eval and ta.per_device_eval_batch_size % n_eval != 0:
        raise ConfigError(
            f"{cls}: per_device_eval_batch_size ({ta.per_device_eval_batch_size}) is not divisible by "
            f"the number of evaluation generations ({n_eval}, from num_generations_eval or num_generations)"
        )


def _callback_problems(value: Any, path: str) -> list[tuple[str, str]]:
    from transformers import TrainerCallback

    from rapidfire_core.trainers.user_callbacks import callback_list

    problems = []
    for i, callback in enumerate(callback_list(value)):
        where = f"{path}[{i}]"
        if isinstance(callback, type):
            if not issubclass(callback, TrainerCallback):
                problems.append((where, f"{callback.__name__} is not a transformers.TrainerCallback"))
                continue
            try:
                inspect.signature(callback).bind()
            except TypeError:
                problems.append((where, f"{callback.__name__} needs arguments: pass an instance"))
            except ValueError:
                pass  # no signature to inspect: the trainer will try
        elif not isinstance(callback, TrainerCallback):
            problems.append(
                (where, f"expected a transformers.TrainerCallback, got {type(callback).__name__}")
            )
        else:
            try:
                copy.deepcopy(callback)
            except Exception as exc:  # noqa: BLE001 - named with the callback below
                problems.append((
                    where,
                    f"{type(callback).__name__} cannot be copied for each run ({type(exc).__name__}: {exc}); "
                    "pass its class, or make it deep-copyable",
                ))  # fmt: skip
    return problems


def _library_problem(field: str, cfg: Any, exc: ConfigError) -> tuple[str, str]:
    """A materialization error, at the one field the library's message names (if one)."""
    text = str(exc.__cause__ or exc)
    named = [name for name in cfg.user_kwargs() if re.search(rf"\b{re.escape(name)}\b", text)]
    return (f"{field}.{named[0]}" if len(named) == 1 else field), str(exc)


def check_run(mc: RFModelConfig, trainer_type: str) -> None:
    """Value rules and callbacks, the GRPO batch rule, then one materialization of the training and
    LoRA configs (module docstring); FieldErrors listing every problem found."""
    ta, pc = mc.training_args, mc.peft_config
    problems = [] if pc is None else [(f"peft_config.{name}", msg) for name, msg in field_problems(pc)]
    problems += [(f"training_args.{name}", msg) for name, msg in field_problems(ta)]
    problems += _callback_problems(getattr(mc, "callbacks", None), "callbacks")
    problems += _callback_problems(getattr(ta, "callbacks", None), "training_args.callbacks")
    problems += divergent_setting_problems(mc, trainer_type)
    if problems:
        raise FieldErrors(problems)
    try:
        if trainer_type == "GRPO":
            check_grpo_batches(ta)
        if trainer_type == "SFT" and getattr(ta, "packing", False):
            raise ConfigError(
                f"{type(ta).__name__}.packing=True is not supported: the engine's chunks are "
                "sets of training rows and packing merges rows into new ones; use packing=False"
            )
        if getattr(ta, "load_best_model_at_end", False):
            # It needs checkpoints (save_strategy) and the engine saves each run's final adapter
            # itself; the run would fail when its trainer is built. (transformers'
            # EarlyStoppingCallback requires it: a callback can stop training without it.)
            raise ConfigError(
                f"{type(ta).__name__}.load_best_model_at_end=True is not supported: the engine keeps "
                "no checkpoints to reload (it saves each run's final adapter); to stop early, use a "
                "callback that sets control.should_training_stop"
            )
    except ConfigError as exc:
        raise FieldErrors([("training_args", str(exc))]) from None
    try:
        ta.to_trl(output_dir=VALIDATION_OUTPUT_DIR, report_to="none")
    except ConfigError as exc:
        raise FieldErrors([_library_problem("training_args", ta, exc)]) from exc
    if pc is not None:
        try:
            pc.to_peft()
        except ConfigError as exc:
            raise FieldErrors([_library_problem("peft_config", pc, exc)]) from exc


def run_label(index: int, knobs: dict[str, Any], varying: list[str]) -> str:
    """``run 3 {peft.r=8, train.learning_rate=0.001}``: the knobs that differ between runs; the
    run at `index` (from 0) of an expansion is counted from 1, as run ids are."""
    shown = {k: knobs[k] for k in varying if k in knobs} or {"model_name": knobs.get("model_name")}
    text = ", ".join(f"{k}={v!r}" for k, v in shown.items())
    if len(text) > 240:
        text = text[:237] + "..."
    return f"run {index + 1} {{{text}}}"


def varying_keys(all_knobs: list[dict[str, Any]]) -> list[str]:
    """Knob names whose values are not the same in every run (first-seen order)."""
    keys: list[str] = []
    for knobs in all_knobs:
        keys.extend(k for k in knobs if k not in keys)
    missing = object()
    return [k for k in keys if len({repr(kn.get(k, missing)) for kn in all_knobs}) > 1]


__all__ = [
    "FieldErrors",
    "check_grpo_batches",
    "check_grpo_eval_batches",
    "check_run",
    "prepare_run",
    "run_label",
    "varying_keys",
]
