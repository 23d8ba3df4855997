"""What TRL, transformers and PEFT install on the model object, and how a shared base keeps it per run.

A stock trainer owns its model; runs in the engine share one base model object. Anything a
trainer writes ON that object (a forward wrapper, a hook, a config field, a module's setting)
would otherwise be shared by every run on the base: the last trainer built (or the last run to
train) would win for all. Each entry of `MODEL_PATCHES` is one such write, found by reading the
trainers' code and checked by `tests/trainers/test_model_patches.py`, which diffs the model object
before and after building (and training) each trainer type and fails on a write this table does not
name. Checked against TRL `TRL_VERSION_CHECKED`, transformers 5.25, PEFT 0.21.

Each write is handled one of three ways, whichever is exact and cheaper:

- ``per_run``: captured when the run's trainer is built (`capture_run_settings`) and put back
  whenever that run computes (`RunModelSettings.apply`): at every turn of a sliced run (so also
  its evaluation and generation), before each fused forward of a cohort for the members whose
  calls it runs, and before each batched generation (calls and generations with different
  settings never share one: `RunModelSettings.key`);
- ``sharing``: runs that differ in it do not share a base (`sharing_constraints`, part of the
  base-model key): each gets the model object it would get alone;
- ``neutral``: written on the shared object, but the same for every run on the base or without
  effect on any value a run computes (said why in the table).

The audit is the table `MODEL_PATCHES` below (one row per write: what, who writes it and
when, the setting it carries, how the engine handles it and why that is exact).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

TRL_VERSION_CHECKED = "1.16"

# Closure cells of TRL's fused-LM-head forward that hold the model's own objects (the same for
# every run on one base), not a run's setting: left out of `forward_key`.
_MODEL_CELLS = frozenset({"original_forward", "text_config"})
_PLAIN = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class ModelPatch:
    """One write a trainer makes on the model object: a row of the audit."""

    what: str
    installed_by: str  # who writes it, and when
    setting: str  # the training setting(s) it carries
    handling: str  # "per_run", "sharing" or "neutral" (module docstring)
    why: str  # why that handling is exact


MODEL_PATCHES: tuple[ModelPatch, ...] = (
    ModelPatch(
        "model.forward = fused-LM-head wrapper",
        "trl.trainer.utils.add_fused_lm_head, in SFT/DPO/GRPO __init__",
        "GRPO temperature and cast_lm_head_to_fp32 (its forward's); DPO use_weighting (its outputs)",
        "per_run",
        "the run's wrapper is installed whenever it computes; calls with others never share a forward",
    ),
    ModelPatch(
        "model.config.use_cache",
        "transformers Trainer.__init__ (= args.use_cache)",
        "use_cache: generation with or without the KV cache",
        "per_run",
        "set whenever the run computes; generations with other values are never batched together",
    ),
    ModelPatch(
        "Dropout.p = 0 on every dropout module",
        "trl disable_dropout_in_model, in DPO/GRPO __init__",
        "disable_dropout",
        "sharing",
        "a base of its own for each value: the modules are those of every adapter on it",
    ),
    ModelPatch(
        "lm_head cast to fp32, its forward replaced, a hook on tied input embeddings",
        "GRPOTrainer.__init__",
        "cast_lm_head_to_fp32",
        "sharing",
        "changes the base weights' dtype: a base of its own for each value",
    ),
    ModelPatch(
        "autocast wrapper around model.forward",
        "accelerate prepare (mixed precision)",
        "fp16 / bf16",
        "sharing",
        "a bf16 run would impose bf16 on an fp32 run sharing its model",
    ),
    ModelPatch(
        "NEFTune noise hook on the input embeddings",
        "transformers Trainer.train",
        "neftune_noise_alpha",
        "sharing",
        "the hook adds noise to every row of every run",
    ),
    ModelPatch(
        "Liger kernels patched into the modules",
        "transformers Trainer.train",
        "use_liger_kernel",
        "sharing",
        "module code replaced for every run",
    ),
    ModelPatch(
        "gradient checkpointing on the decoder layers",
        "transformers Trainer.train (activation_checkpointing_enable); TRL turns it off around generate",
        "gradient_checkpointing, gradient_checkpointing_kwargs",
        "neutral",
        "recompute gives the same values and, RNG restored, the same dropout masks; time and memory differ",
    ),
    ModelPatch(
        "forward hook making the input embeddings' output require grad",
        "enable_input_require_grads: TRL __init__ (PEFT + checkpointing), transformers' checkpointing",
        "gradient_checkpointing",
        "neutral",
        "no value changes: it only gives checkpointed layers an input that requires grad",
    ),
    ModelPatch(
        "config / generation_config special-token ids",
        "transformers align_special_tokens, in Trainer.train",
        "the tokenizer",
        "neutral",
        "the tokenizer is part of the base-model key: the same for every run on a base",
    ),
    ModelPatch(
        "model_tags; PEFT 'default' / 'ref' adapters",
        "trl add_model_tags; DPO/GRPO __init__ with a PeftModel",
        "-",
        "neutral",
        "tags are metadata; the reference adapter: trainers.factory.reference_is_base_model",
    ),
)


def sharing_constraints(training_args: Any) -> dict[str, Any]:
    """The ``sharing`` rows of `MODEL_PATCHES`: training settings that change the model object for
    every run on it, so runs must agree in them to share a base model (part of its key)."""
    precision = "fp16" if training_args.fp16 else "bf16" if training_args.bf16 else "no"
    return {
        "mixed_precision": precision,
        "disable_dropout": getattr(training_args, "disable_dropout", None),
        "cast_lm_head_to_fp32": getattr(training_args, "cast_lm_head_to_fp32", None),
        "neftune_noise_alpha": training_args.neftune_noise_alpha,
        "use_liger_kernel": training_args.use_liger_kernel,
    }


def transformers_model(model: Any) -> Any:
    """The transformers model TRL patches: the base model under a PEFT wrapper, else the model."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def forward_key(forward: Callable | None) -> tuple:
    """A hashable description of a run's forward: equal keys compute the same values.

    For TRL's fused-LM-head wrapper: its function and its settings (the plain values of its
    closure: temperature, cast_lm_head_to_fp32, outputs, ...). A closure value of a kind this
    function does not know is keyed by identity, so runs holding one never share a forward."""
    if forward is None:
        return ("class forward",)
    func = getattr(forward, "__func__", forward)
    code = getattr(func, "__code__", None)
    if code is None:
        return ("id", id(forward))
    names, cells = code.co_freevars, getattr(func, "__closure__", None) or ()
    key: list[Any] = [code.co_filename, code.co_qualname]  # its own (functools.wraps copies __qualname__)
    for name, cell in sorted(zip(names, cells, strict=True)):
        if name in _MODEL_CELLS:
            continue
        value = cell.cell_contents
        plain = isinstance(value, _PLAIN) or (
            isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)
        )
        key.append((name, value if plain else ("id", id(value))))
    return tuple(key)


@dataclass
class RunModelSettings:
    """The ``per_run`` writes of one run's trainer on the shared model (module docstring).

    target: the transformers model the writes are on; forward: the instance `forward` the run's
    trainer installed (None: the class's own); use_cache: its `config.use_cache`."""

    target: Any
    forward: Callable | None
    use_cache: Any
    _key: tuple = field(init=False)

    def __post_init__(self) -> None:
        self._key = (forward_key(self.forward), self.use_cache)

    def key(self) -> tuple:
        """Runs with equal keys may share a forward or a generation."""
        return self._key

    def apply(self) -> None:
        """Make these settings the model's (a dict write each: cheap enough for every hand-off)."""
        instance = self.target.__dict__
        if self.forward is None:
            instance.pop("forward", None)
        elif instance.get("forward") is not self.forward:
            instance["forward"] = self.forward
        config = getattr(self.target, "config", None)
        if config is not None and getattr(config, "use_cache", None) != self.use_cache:
            config.use_cache = self.use_cache


@contextlib.contextmanager
def capture_run_settings(model: Any, holder: list[RunModelSettings]) -> Iterator[None]:
    """Build a trainer inside the block: its ``per_run`` writes on ``model`` are appended to
    ``holder`` as the run's `RunModelSettings`.

    The model's instance `forward` (an earlier run's wrapper) is taken off first, so the new
    trainer wraps the class's forward, as it would on a fresh model (wrappers do not nest)."""
    target = transformers_model(model)
    target.__dict__.pop("forward", None)
    yield
    config = getattr(target, "config", None)
    use_cache = getattr(config, "use_cache", None)
    holder.append(RunModelSettings(target, target.__dict__.get("forward"), use_cache))
