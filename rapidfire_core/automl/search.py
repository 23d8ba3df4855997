"""Config groups: ``RFGridSearch`` and ``RFRandomSearch``, and the ``RunSpec`` they expand to.

The contract the engine relies on::

    group = RFGridSearch(configs, trainer_type="SFT")     # or RFRandomSearch(..., num_runs=8, seed=42)
    group.trainer_type          # "SFT" | "DPO" | "GRPO"  (given case-insensitively, stored upper)
    runs = group.expand()       # -> list[RunSpec], validated; raises rapidfire_core.errors.ConfigError
    runs = group.expand(strict=False)   # every run; an invalid one carries its `error` (run_fit
                                        # makes it FAILED with that reason, the others train)

    @dataclass(frozen=True)
    class RunSpec:
        trainer_type: str
        model_config: RFModelConfig   # concrete: no List/Range anywhere inside; its peft_config
                                      # (RFLoraConfig or None) and training_args (the trainer's
                                      # RF config) are concrete RF configs
        knobs: dict[str, Any]         # flattened user-set values (flatten.py): "model_name",
                                      # "peft.r", "train.learning_rate", ...; JSON-friendly
        def training_args(self, **overrides) -> trl.SFTConfig | trl.DPOConfig | trl.GRPOConfig
        def lora_config(self) -> peft.LoraConfig | None
        def create_model_dict(self) -> dict   # what the user's create_model(model_config) receives

``configs`` is a ``List`` of RFModelConfig, a single RFModelConfig, or a python list of
them (Lists may nest). A ``List`` anywhere inside expands (see ``expand.py``):

- grid order: top-level configs in order; within one config, its fields in declaration
  order with the earlier field as the outer loop (model_name, ..., peft_config,
  training_args, ...; inside an RF config its user-set fields in the library's
  declaration order); each List's values in List order. The seeds' 2 configs x 2 LoRA
  configs give (cfg1, lora1), (cfg1, lora2), (cfg2, lora1), (cfg2, lora2).
- random: ``num_runs`` draws with ``random.Random(seed)``; each draw samples the top-level
  List, then every knob inside in the same fixed order. Draws identical to an earlier one
  are discarded (as RapidFire AI does); fewer than ``num_runs`` distinct configs after
  ``10 * num_runs`` draws is a ConfigError.

``expand()`` validates each run (``validate.py``) and raises one ConfigError listing every
invalid run by its position in the expansion (counted from 1, as run ids are) and the knobs that
distinguish it, each problem named by its path from the search's configs:
``run 2 {peft.r=0}: configs[1].peft_config.r: ...``. With ``strict=False`` it raises only when
every run is invalid.
"""

from __future__ import annotations

import abc
import dataclasses
import random
from typing import Any

from rapidfire_core.automl.expand import fingerprint, grid, sample
from rapidfire_core.automl.flatten import flatten_knobs
from rapidfire_core.automl.knobs import List
from rapidfire_core.automl.model_config import RFModelConfig
from rapidfire_core.automl.validate import FieldErrors, check_run, prepare_run, run_label, varying_keys
from rapidfire_core.errors import ConfigError

TRAINER_TYPES = ("SFT", "DPO", "GRPO")
_MAX_ERRORS_SHOWN = 8


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One concrete, validated run of a config group (module docstring)."""

    trainer_type: str
    model_config: RFModelConfig
    knobs: dict[str, Any]
    error: str | None = None  # why the config is invalid (expand(strict=False)); None: valid

    def training_args(self, **overrides: Any) -> Any:
        """The TRL config of this run (``RF*Config.to_trl``: translations, CPU fallbacks, overrides)."""
        return self.model_config.training_args.to_trl(**overrides)

    def lora_config(self) -> Any:
        """The ``peft.LoraConfig`` of this run, or None for full fine-tuning."""
        pc = self.model_config.peft_config
        return None if pc is None else pc.to_peft()

    def create_model_dict(self) -> dict[str, Any]:
        """The mapping passed to the user's ``create_model(model_config)``.

        Every RFModelConfig field (``model_name``, ``model_type``, ``model_kwargs``, ``tokenizer_kwargs``,
        ...; ``None`` ``*_kwargs`` as ``{}``), plus ``trainer_type``, ``peft_params`` (the user-set
        LoRA fields) and ``ref_model_config`` (``model_name`` / ``model_type`` / ``model_kwargs``
        of the reference model), as RapidFire AI's run leaves carry them.
        """
        mc = self.model_config
        out = mc.to_dict()
        out["trainer_type"] = self.trainer_type
        out["peft_params"] = {} if mc.peft_config is None else mc.peft_config.user_kwargs()
        out["ref_model_config"] = {
            "model_name": mc.ref_model_name,
            "model_type": mc.ref_model_type,
            "model_kwargs": out["ref_model_kwargs"],
        }
        return out


def _normalize_trainer_type(trainer_type: Any) -> str:
    if not isinstance(trainer_type, str) or trainer_type.upper() not in TRAINER_TYPES:
        allowed = ", ".join(TRAINER_TYPES)
        raise ConfigError(f"trainer_type must be one of {allowed} (any case), got {trainer_type!r}")
    return trainer_type.upper()


def _check_config_tree(value: Any, path: str) -> None:
    if isinstance(value, List):
        for i, v in enumerate(value.values):
            _check_config_tree(v, f"{path}[{i}]")
    elif not isinstance(value, RFModelConfig):
        raise ConfigError(f"{path} must be an RFModelConfig (or a List of them), got {type(value).__name__}")


def _normalize_configs(configs: Any) -> list[Any]:
    if isinstance(configs, List):
        items = list(configs.values)
    elif isinstance(configs, (list, tuple)):
        items = list(configs)
    elif isinstance(configs, RFModelConfig):
        items = [configs]
    else:
        raise ConfigError(
            "configs must be an RFModelConfig, a List of them or a python list of them, "
            f"got {type(configs).__name__}"
        )
    if not items:
        raise ConfigError("configs is empty: give at least one RFModelConfig")
    for i, item in enumerate(items):
        _check_config_tree(item, f"configs[{i}]")
    return items


class _ConfigGroup(abc.ABC):
    """What grid and random search share: configs, trainer type, validation of the runs."""

    def __init__(self, configs: Any, trainer_type: str = "SFT") -> None:
        self.trainer_type = _normalize_trainer_type(trainer_type)
        self.configs = _normalize_configs(configs)

    @abc.abstractmethod
    def _candidates(self) -> list[RFModelConfig]:
        """The concrete model configs this search yields, in order."""

    def _located_candidates(self) -> list[tuple[str, RFModelConfig]]:
        """``(origin, config)`` per candidate: the origin (``configs[1]``) names it in errors."""
        return [("configs", mc) for mc in self._candidates()]

    def expand(self, strict: bool = True) -> list[RunSpec]:
        """The validated runs (module docstring); ConfigError naming every invalid run (with
        strict=False: only if no run is valid; each invalid run carries its `error`)."""
        located = [(origin, mc.copy()) for origin, mc in self._located_candidates()]
        candidates = [mc for _, mc in located]
        problems: dict[int, str] = {}
        for i, (origin, mc) in enumerate(located):
            try:
                prepare_run(mc, self.trainer_type)  # normalises in place
            except ConfigError as exc:
                problems[i] = f"{origin}: {exc}"
        all_knobs = [flatten_knobs(mc) for mc in candidates]
        for i, (origin, mc) in enumerate(located):
            if i not in problems:
                try:
                    check_run(mc, self.trainer_type)
                except FieldErrors as exc:
                    problems[i] = "; ".join(exc.located(origin))
                except ConfigError as exc:
                    problems[i] = f"{origin}: {exc}"
        if problems and (strict or len(problems) == len(candidates)):
            self._raise(problems, all_knobs, len(candidates))
        return [
            RunSpec(self.trainer_type, mc, knobs, problems.get(i))
            for i, (mc, knobs) in enumerate(zip(candidates, all_knobs, strict=True))
        ]

    def _raise(self, problems: dict[int, str], all_knobs: list[dict[str, Any]], total: int) -> None:
        varying = varying_keys(all_knobs)
        lines = [f"{run_label(i, all_knobs[i], varying)}: {msg}" for i, msg in sorted(problems.items())]
        more = len(lines) - _MAX_ERRORS_SHOWN
        lines = lines[:_MAX_ERRORS_SHOWN] + ([f"... and {more} more"] if more > 0 else [])
        group = f"{type(self).__name__}(trainer_type={self.trainer_type!r})"
        head = f"{group}: {len(problems)} of {total} runs invalid"
        raise ConfigError(head + ":\n  " + "\n  ".join(lines))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.configs)} configs, trainer_type={self.trainer_type!r})"


class RFGridSearch(_ConfigGroup):
    """Every combination of every ``List`` (and discrete ``Range``), in the documented order."""

    def _candidates(self) -> list[RFModelConfig]:
        return [mc for _, mc in self._located_candidates()]

    def _located_candidates(self) -> list[tuple[str, RFModelConfig]]:
        # grid(List(configs)) is each config's grid in turn: expanded one by one, each keeps its index.
        return [
            (f"configs[{i}]", mc)
            for i, config in enumerate(self.configs)
            for mc in grid(config, f"configs[{i}]")
        ]


class RFRandomSearch(_ConfigGroup):
    """``num_runs`` distinct random draws from the search space, reproducible with ``seed``."""

    def __init__(self, configs: Any, trainer_type: str = "SFT", num_runs: int = 1, seed: int = 42) -> None:
        super().__init__(configs, trainer_type)
        if isinstance(num_runs, bool) or not isinstance(num_runs, int) or num_runs < 1:
            raise ConfigError(f"num_runs must be a positive int, got {num_runs!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an int, got {seed!r}")
        self.num_runs = num_runs
        self.seed = seed

    def _candidates(self) -> list[RFModelConfig]:
        return [mc for _, mc in self._located_candidates()]

    def _located_candidates(self) -> list[tuple[str, RFModelConfig]]:
        rng = random.Random(self.seed)
        runs: list[tuple[str, RFModelConfig]] = []
        seen: set[Any] = set()
        attempts = 0
        while len(runs) < self.num_runs and attempts < 10 * self.num_runs:
            attempts += 1
            # sample(List(configs), rng) draws the config, then samples it: the same draws, and
            # the index of the config drawn names it in errors.
            config = rng.choice(self.configs)
            index = next(i for i, c in enumerate(self.configs) if c is config)
            draw = sample(config, rng)
            key = fingerprint(draw)
            if key not in seen:
                seen.add(key)
                runs.append((f"configs[{index}]", draw))
        if len(runs) < self.num_runs:
            raise ConfigError(
                f"RFRandomSearch: only {len(runs)} distinct configs in {attempts} draws, "
                f"num_runs={self.num_runs}; widen the search space or lower num_runs"
            )
        return runs

    def __repr__(self) -> str:
        return (
            f"RFRandomSearch({len(self.configs)} configs, trainer_type={self.trainer_type!r}, "
            f"num_runs={self.num_runs}, seed={self.seed})"
        )


__all__ = ["TRAINER_TYPES", "RFGridSearch", "RFRandomSearch", "RunSpec"]
