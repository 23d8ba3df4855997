"""RF wrappers of the peft / TRL configs: RFLoraConfig, RFSFTConfig, RFDPOConfig, RFGRPOConfig.

Each is a real subclass of the library class (``isinstance(RFSFTConfig(), trl.SFTConfig)``)
whose fields may hold ``List`` / ``Range`` knobs; see ``rf_config.py`` for construction,
validation, ``copy()`` and ``repr`` semantics and ``translate.py`` for what materialization
changes. Materialize a concrete config (no knobs left) with:

- ``RFLoraConfig.to_peft() -> peft.LoraConfig``
- ``RF{SFT,DPO,GRPO}Config.to_trl(**overrides) -> trl.{SFT,DPO,GRPO}Config``

Any exception from the library's own ``__post_init__`` becomes a ``ConfigError`` that names
the RF config class.

The training configs also take the engine's own fields (``ENGINE_FIELDS``), which are knobs
like any field but go to the run's trainer, not to the TRL config: ``callbacks`` (TrainerCallback
instances or classes, after ``RFModelConfig.callbacks``; see ``trainers.user_callbacks``).
"""

from __future__ import annotations

import warnings
from typing import Any

import peft
import trl

from rapidfire_core.automl.knobs import clone_value
from rapidfire_core.automl.model_config import CALLBACKS_ANNOTATION
from rapidfire_core.automl.rf_config import RFConfigBase, find_knob
from rapidfire_core.automl.translate import legacy_fields_for, training_kwargs
from rapidfire_core.errors import ConfigError, ConfigTranslationWarning


def _build(rf: RFConfigBase, kwargs: dict[str, Any]) -> Any:
    parent = type(rf)._rf_parent
    try:
        return parent(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the config named
        library = f"{parent.__module__.split('.')[0]}.{parent.__name__}"
        raise ConfigError(
            f"{type(rf).__name__}: {library} rejected the configuration: {type(exc).__name__}: {exc}"
        ) from exc


def _require_concrete(rf: RFConfigBase, method: str) -> None:
    path = find_knob(rf, "")
    if path is not None:
        raise ConfigError(
            f"{type(rf).__name__}.{method}: field {path!r} still holds {getattr(rf, path.split('[')[0])!r}; "
            "expand the search space first (RFGridSearch / RFRandomSearch .expand())"
        )


def _concrete_kwargs(rf: RFConfigBase) -> dict[str, Any]:
    return {k: clone_value(v) for k, v in rf.user_kwargs().items()}


class RFLoraConfig(RFConfigBase, peft.LoraConfig):
    """``peft.LoraConfig`` whose fields may be knobs (``r=List([8, 32])``)."""

    _rf_parent = peft.LoraConfig
    _rf_kind = "LoRA"

    def to_peft(self) -> peft.LoraConfig:
        """The concrete ``peft.LoraConfig`` (user-set fields; peft supplies the defaults)."""
        _require_concrete(self, "to_peft")
        return _build(self, _concrete_kwargs(self))


# field -> annotation: accepted by every RF training config, passed to the trainer, not to TRL's config
ENGINE_FIELDS: dict[str, Any] = {"callbacks": CALLBACKS_ANNOTATION}


class _RFTrainingConfig(RFConfigBase):
    """Shared ``to_trl`` of the three TRL training configs."""

    @classmethod
    def _rf_legacy_fields(cls, library_fields: set[str]) -> dict[str, Any]:
        engine = {name: ann for name, ann in ENGINE_FIELDS.items() if name not in library_fields}
        return legacy_fields_for(cls._rf_kind, library_fields) | engine

    def _rf_after_from_library(self, obj: Any) -> None:
        # TRL resolves an unset bf16 to ``not fp16``; that derived value is not a user choice.
        default_is_none = self._rf_spec().defaults["bf16"]() is None
        if self.is_user_set("bf16") and default_is_none and obj.bf16 == (not obj.fp16):
            self._rf_user_set.remove("bf16")
            object.__setattr__(self, "bf16", None)

    def trl_kwargs(self, gpu: bool | None = None, **overrides: Any) -> tuple[dict[str, Any], list[str]]:
        """``(kwargs, messages)`` ``to_trl`` would use, without building the TRL object."""
        _require_concrete(self, "to_trl")
        user = {k: v for k, v in _concrete_kwargs(self).items() if k not in ENGINE_FIELDS}
        return training_kwargs(type(self).__name__, self._rf_kind, self._rf_parent, user, overrides, gpu=gpu)

    def to_trl(self, **overrides: Any) -> Any:
        """The concrete TRL config: legacy translations, ``overrides``, CPU fallbacks (translate.py).

        Each translation is emitted as one ``ConfigTranslationWarning``, once per config object
        (``expand()`` materializes every run once, so the engine's later calls stay quiet).
        """
        kwargs, messages = self.trl_kwargs(**overrides)
        warned = self.__dict__.setdefault("_rf_warned", set())
        for message in messages:
            if message not in warned:
                warned.add(message)
                warnings.warn(message, ConfigTranslationWarning, stacklevel=2)
        return _build(self, kwargs)


class RFSFTConfig(_RFTrainingConfig, trl.SFTConfig):
    """``trl.SFTConfig`` whose fields may be knobs (``learning_rate=List([1e-3, 1e-4])``)."""

    _rf_parent = trl.SFTConfig
    _rf_kind = "SFT"


class RFDPOConfig(_RFTrainingConfig, trl.DPOConfig):
    """``trl.DPOConfig`` whose fields may be knobs; accepts the legacy DPO fields (translate.py)."""

    _rf_parent = trl.DPOConfig
    _rf_kind = "DPO"


class RFGRPOConfig(_RFTrainingConfig, trl.GRPOConfig):
    """``trl.GRPOConfig`` whose fields may be knobs (``num_generations=List([4, 8])``)."""

    _rf_parent = trl.GRPOConfig
    _rf_kind = "GRPO"

    def _rf_after_from_library(self, obj: Any) -> None:
        super()._rf_after_from_library(obj)
        # GRPOConfig.__post_init__ derives both generation_batch_size and steps_per_generation;
        # passing both back is rejected, and steps_per_generation alone determines the other.
        if self.is_user_set("generation_batch_size") and self.is_user_set("steps_per_generation"):
            self._rf_user_set.remove("generation_batch_size")
            object.__setattr__(self, "generation_batch_size", None)


TRAINING_CONFIGS: dict[str, type[_RFTrainingConfig]] = {
    "SFT": RFSFTConfig,
    "DPO": RFDPOConfig,
    "GRPO": RFGRPOConfig,
}
LIBRARY_TRAINING_CONFIGS: dict[str, type] = {
    "SFT": trl.SFTConfig,
    "DPO": trl.DPOConfig,
    "GRPO": trl.GRPOConfig,
}

__all__ = ["RFDPOConfig", "RFGRPOConfig", "RFLoraConfig", "RFSFTConfig"]
