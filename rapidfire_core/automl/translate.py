"""From an RF training config to the keyword arguments of the installed TRL config class.

``training_kwargs(cfg, overrides)`` returns ``(kwargs, messages)``: the user-set fields,
with

1. **legacy fields translated.** A legacy field is accepted only while the installed TRL
   class lacks it (checked with ``dataclasses.fields`` at runtime, never by version
   number): when TRL has it again it is an ordinary field, passed through silently.

   ===========================  =========  ===============================================
   field                        trainers   becomes
   ===========================  =========  ===============================================
   warmup_ratio=r               all        ``warmup_steps=r`` (transformers 5: a float
                                           ``warmup_steps`` < 1 is a fraction of the total
                                           steps, ``ceil(total * r)``); ignored when the
                                           user also set ``warmup_steps > 0`` (transformers
                                           4 precedence). ``r`` must be in [0, 1).
   evaluation_strategy          all        ``eval_strategy``
   no_cuda                      all        ``use_cpu``
   overwrite_output_dir,        all        dropped (the engine owns output directories;
   logging_dir                             transformers 5 removed both)
   max_seq_length               SFT        ``max_length``
   max_prompt_length +          DPO        ``max_length = prompt + completion`` when the
   max_completion_length                   user gave no ``max_length``; else dropped (TRL 1.x
                                           DPO truncates the joined sequence to max_length)
   max_prompt_length            GRPO       dropped (TRL 1.x GRPO does not truncate prompts)
   model_adapter_name,          DPO        dropped: the engine's DPO reference is the base
   ref_adapter_name,                       model with the run's adapter disabled (or
   force_use_ref_model                     ``RFModelConfig.ref_model_name``'s model)
   ===========================  =========  ===============================================

   (Also, silently: ``gradient_checkpointing*`` is passed as ``activation_checkpointing*``
   where the installed transformers has the new name, avoiding its deprecation warning.)
2. ``overrides`` applied (the engine's ``output_dir``, ``report_to``, ...; each must be a
   field of the TRL class);
3. **CPU fallbacks** when no usable GPU (``gpu_available()`` is False): ``fp16`` /
   ``bf16`` / ``*_full_eval`` True -> False, ``tf32`` True -> None, an ``optim`` naming
   ``8bit`` / ``paged`` / ``bnb`` -> ``adamw_torch``, ``use_cpu=True``; an unset ``bf16``
   becomes False too (TRL would default it to True = bf16 autocast on CPU; we train in
   float32 so CPU results match the reference).

Every change is one ``messages`` line; ``to_trl`` emits each as a
``ConfigTranslationWarning``. ``gpu_available`` is injectable: ``set_gpu_probe(fn)`` or
``with assume_gpu(False): ...``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Callable, Iterator
from typing import Any

from rapidfire_core.errors import ConfigError

ALL_TRAINERS = frozenset({"SFT", "DPO", "GRPO"})

# legacy field -> (annotation, trainers that knew it)
LEGACY_FIELDS: dict[str, tuple[Any, frozenset[str]]] = {
    "warmup_ratio": (float, ALL_TRAINERS),
    "evaluation_strategy": (str, ALL_TRAINERS),
    "no_cuda": (bool, ALL_TRAINERS),
    "overwrite_output_dir": (bool, ALL_TRAINERS),
    "logging_dir": (str | None, ALL_TRAINERS),
    "max_seq_length": (int | None, frozenset({"SFT"})),
    "max_prompt_length": (int | None, frozenset({"DPO", "GRPO"})),
    "max_completion_length": (int | None, frozenset({"DPO", "GRPO"})),
    "model_adapter_name": (str | None, frozenset({"DPO"})),
    "ref_adapter_name": (str | None, frozenset({"DPO"})),
    "force_use_ref_model": (bool, frozenset({"DPO"})),
}

_REFERENCE_NOTE = (
    "the engine's DPO reference is the base model with this run's adapter disabled (or the model "
    "RFModelConfig.ref_model_name names)"
)
_GPU_ONLY_OPTIM_MARKERS = ("8bit", "paged", "bnb")


def legacy_fields_for(kind: str, library_fields: set[str]) -> dict[str, Any]:
    """Legacy keywords an RF config of ``kind`` accepts: known to ``kind``, absent from TRL now."""
    return {
        name: ann
        for name, (ann, kinds) in LEGACY_FIELDS.items()
        if kind in kinds and name not in library_fields
    }


# -- GPU probe -----------------------------------------------------------------------
def _torch_cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


_gpu_probe: Callable[[], bool] = _torch_cuda_available


def gpu_available() -> bool:
    """Whether GPU-only settings can be kept (default: ``torch.cuda.is_available()``)."""
    return bool(_gpu_probe())


def set_gpu_probe(probe: Callable[[], bool] | None) -> Callable[[], bool]:
    """Replace the GPU probe (None restores the default); returns the previous probe."""
    global _gpu_probe
    previous = _gpu_probe
    _gpu_probe = probe if probe is not None else _torch_cuda_available
    return previous


@contextlib.contextmanager
def assume_gpu(available: bool) -> Iterator[None]:
    """Within the block, ``gpu_available()`` returns ``available``."""
    previous = set_gpu_probe(lambda: available)
    try:
        yield
    finally:
        set_gpu_probe(previous)


# -- translation ---------------------------------------------------------------------
@dataclasses.dataclass
class _Ctx:
    cls_name: str
    kind: str
    kwargs: dict[str, Any]  # what goes to the TRL class
    legacy: dict[str, Any]  # user-set legacy fields
    messages: list[str]

    def note(self, text: str) -> None:
        self.messages.append(f"{self.cls_name}: {text}")


def training_kwargs(
    cls_name: str,
    kind: str,
    library_cls: type,
    user_values: dict[str, Any],
    overrides: dict[str, Any],
    gpu: bool | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments for ``library_cls`` and the translation messages (module docstring)."""
    library_fields = {f.name for f in dataclasses.fields(library_cls) if f.init}
    ctx = _Ctx(
        cls_name,
        kind,
        kwargs={k: v for k, v in user_values.items() if k in library_fields},
        legacy={k: v for k, v in user_values.items() if k not in library_fields},
        messages=[],
    )
    _translate_legacy(ctx, library_fields)
    _resolve_deprecated_aliases(ctx, library_cls)
    unknown = sorted(k for k in overrides if k not in library_fields)
    if unknown:
        lib = library_cls.__name__
        raise ConfigError(f"{cls_name}.to_trl: override(s) {unknown} are not fields of {lib}")
    ctx.kwargs.update(overrides)
    if not (gpu_available() if gpu is None else gpu):
        _cpu_fallbacks(ctx, library_fields)
    return ctx.kwargs, ctx.messages


def _translate_legacy(ctx: _Ctx, library_fields: set[str]) -> None:
    legacy, kw = ctx.legacy, ctx.kwargs
    if "warmup_ratio" in legacy:
        ratio = legacy.pop("warmup_ratio")
        if not 0 <= ratio < 1:
            raise ConfigError(f"{ctx.cls_name}.warmup_ratio must be in [0, 1), got {ratio!r}")
        steps = kw.get("warmup_steps")
        if steps is not None and steps > 0:
            ctx.note(f"warmup_ratio={ratio!r} ignored: warmup_steps={steps!r} is set and takes precedence")
        else:
            kw["warmup_steps"] = float(ratio)
            ctx.note(
                f"warmup_ratio={ratio!r} -> warmup_steps={float(ratio)!r} (installed transformers has no "
                "warmup_ratio; a float warmup_steps < 1 is a fraction of the total training steps)"
            )
    _rename(ctx, "evaluation_strategy", "eval_strategy")
    _rename(ctx, "no_cuda", "use_cpu")
    _rename(ctx, "max_seq_length", "max_length")
    for name in ("overwrite_output_dir", "logging_dir"):
        if name in legacy:
            ctx.note(
                f"{name}={legacy.pop(name)!r} dropped (not a field of the installed transformers; "
                "the engine manages output and logging directories)"
            )
    if ctx.kind == "DPO" and ("max_prompt_length" in legacy or "max_completion_length" in legacy):
        _dpo_lengths(ctx)
    if ctx.kind == "GRPO" and "max_prompt_length" in legacy:
        value = legacy.pop("max_prompt_length")
        ctx.note(
            f"max_prompt_length={value!r} dropped: the installed TRL's GRPOConfig does not truncate "
            "prompts (truncate them in the dataset if needed)"
        )
    for name in ("model_adapter_name", "ref_adapter_name", "force_use_ref_model"):
        if name in legacy:
            ctx.note(f"{name}={legacy.pop(name)!r} dropped: {_REFERENCE_NOTE}")
    for name in list(legacy):  # a legacy field with no rule above (future additions)
        ctx.note(f"{name}={legacy.pop(name)!r} dropped: not a field of the installed TRL config")


def _resolve_deprecated_aliases(ctx: _Ctx, library_cls: type) -> None:
    """Pass ``gradient_checkpointing*`` under its new name ``activation_checkpointing*``.

    transformers 5.x deprecated the old names; TRL still defaults ``gradient_checkpointing=True``,
    so every TRL config would warn. Same value under the new name: no behaviour change, no warning.
    Only when the installed class has the new field and the user did not set it.
    """
    fields = {f.name: f for f in dataclasses.fields(library_cls) if f.init}
    for old, new in (
        ("gradient_checkpointing", "activation_checkpointing"),
        ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
    ):
        if old not in fields or new not in fields or new in ctx.kwargs:
            continue
        value = ctx.kwargs.get(old, fields[old].default)
        if value is not None and value is not dataclasses.MISSING:
            ctx.kwargs[new] = value


def _rename(ctx: _Ctx, old: str, new: str) -> None:
    if old not in ctx.legacy:
        return
    value = ctx.legacy.pop(old)
    if new in ctx.kwargs:
        ctx.note(f"{old}={value!r} ignored: {new}={ctx.kwargs[new]!r} is set")
    else:
        ctx.kwargs[new] = value
        ctx.note(f"{old}={value!r} -> {new}={value!r} (renamed in the installed TRL/transformers)")


def _dpo_lengths(ctx: _Ctx) -> None:
    prompt = ctx.legacy.pop("max_prompt_length", None)
    completion = ctx.legacy.pop("max_completion_length", None)
    pairs = (("max_prompt_length", prompt), ("max_completion_length", completion))
    given = ", ".join(f"{n}={v!r}" for n, v in pairs if v is not None)
    if "max_length" in ctx.kwargs:
        ctx.note(
            f"{given} dropped: the installed TRL's DPOConfig has no separate prompt/completion limits; "
            f"prompt+completion is truncated to max_length={ctx.kwargs['max_length']!r}"
        )
    elif prompt is not None and completion is not None:
        ctx.kwargs["max_length"] = prompt + completion
        ctx.note(
            f"{given} -> max_length={prompt + completion!r} (the installed TRL's DPOConfig truncates "
            "prompt+completion to max_length)"
        )
    elif given:
        ctx.note(f"{given} dropped: the installed TRL's DPOConfig only has max_length (kept at its default)")


def _cpu_fallbacks(ctx: _Ctx, library_fields: set[str]) -> None:
    kw = ctx.kwargs
    why = "no usable GPU (torch.cuda.is_available() is False)"
    for flag in ("fp16", "bf16", "fp16_full_eval", "bf16_full_eval"):
        if kw.get(flag) is True:
            kw[flag] = False
            ctx.note(f"{flag}=True -> False: {why}; training runs in float32 on CPU")
    if "bf16" in library_fields and kw.get("bf16") is None:
        kw["bf16"] = False  # TRL would resolve None to True (bf16 autocast on CPU); keep float32
    if kw.get("tf32") is True:
        kw["tf32"] = None
        ctx.note(f"tf32=True -> None: {why}")
    optim = kw.get("optim")
    if optim is not None:
        name = str(optim.value if isinstance(optim, enum.Enum) else optim)
        if any(marker in name.lower() for marker in _GPU_ONLY_OPTIM_MARKERS):
            kw["optim"] = "adamw_torch"
            ctx.note(f"optim={name!r} -> 'adamw_torch': {why} (bitsandbytes/paged optimizers need CUDA)")
    if "use_cpu" in library_fields:
        if kw.get("use_cpu") is False:
            ctx.note(f"use_cpu=False -> True: {why}")
        kw["use_cpu"] = True


__all__ = [
    "LEGACY_FIELDS",
    "assume_gpu",
    "gpu_available",
    "legacy_fields_for",
    "set_gpu_probe",
    "training_kwargs",
]
