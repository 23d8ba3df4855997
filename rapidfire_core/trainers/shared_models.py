"""Base models shared by runs, with one named LoRA adapter per run.

`create_model(model_config)` (the user's function, as in the seeds) is called ONCE per
distinct base: runs whose (model_name, model_type, model_kwargs, tokenizer_kwargs) and
`trainers.model_patches.sharing_constraints` (training settings that alter the model object)
agree and that train a LoRA adapter share one model object; each run adds its own named adapter
and the scheduler activates it when the run has the turn. Runs without a peft config (full fine-tuning)
get a model of their own.

Adapter initialisation matches stock TRL: TRL's trainers call `set_seed(args.seed)` and then
`get_peft_model`, so an adapter created here under `set_seed(args.seed)` has the same initial
weights.

`create_model` must return `(model, tokenizer)`: a `torch.nn.Module` and a tokenizer or
processor (or None: TRL then loads the model's own). Anything else is a
`CreateModelContractError` naming what came back (a swapped pair says so). `preload` makes the
first base model before any run is built, so `run_fit` raises that error itself, before any
run exists; an ordinary exception of `create_model` there is kept for the run that needs the
model, which then fails with it (one bad model must not stop the other runs).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class AttachedModel:
    model: Any  # a peft.PeftModel when adapter_name is set
    tokenizer: Any
    adapter_name: str | None


def _stable_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def base_model_key(model_config: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """Runs with equal keys share one base model."""
    return _stable_key(
        {
            "model_name": model_config.get("model_name"),
            "model_type": model_config.get("model_type"),
            "model_kwargs": model_config.get("model_kwargs"),
            "tokenizer": model_config.get("tokenizer"),
            "tokenizer_kwargs": model_config.get("tokenizer_kwargs"),
            **(extra or {}),
        }
    )


def reference_model_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """What `create_model` receives for a run's DPO reference model (`ModelRegistry.reference`)."""
    return {
        **model_config,
        "model_name": model_config["ref_model_name"],
        "model_type": model_config.get("ref_model_type") or model_config.get("model_type"),
        "model_kwargs": model_config.get("ref_model_kwargs") or model_config.get("model_kwargs") or {},
    }


class CreateModelContractError(TypeError):
    """`create_model` returned something other than `(model, tokenizer)`."""


def _is_tokenizer(value: Any) -> bool:
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

    return isinstance(value, (PreTrainedTokenizerBase, ProcessorMixin))


def check_created(created: Any) -> tuple[Any, Any]:
    """`created` as `(model, tokenizer)`, or a CreateModelContractError saying what it is."""
    import torch

    expected = "create_model(model_config) must return (model, tokenizer)"
    if not (isinstance(created, (tuple, list)) and len(created) == 2):
        got = f"a {len(created)}-tuple" if isinstance(created, (tuple, list)) else type(created).__name__
        raise CreateModelContractError(f"{expected}, got {got}")
    model, tokenizer = created
    names = f"({type(model).__name__}, {type(tokenizer).__name__})"
    if _is_tokenizer(model) and isinstance(tokenizer, torch.nn.Module):
        raise CreateModelContractError(f"{expected}, got (tokenizer, model) {names}: swap them")
    if not isinstance(model, torch.nn.Module):
        raise CreateModelContractError(f"{expected}: the model is not a torch.nn.Module, got {names}")
    if tokenizer is not None and not _is_tokenizer(tokenizer):
        raise CreateModelContractError(
            f"{expected}: the tokenizer is not a transformers tokenizer or processor (or None), got {names}"
        )
    return model, tokenizer


class ModelRegistry:
    """Creates each distinct base model once and attaches run adapters to it."""

    def __init__(self, create_model: Callable[[dict[str, Any]], tuple[Any, Any]]) -> None:
        self._create_model = create_model
        self._bases: dict[str, tuple[Any, Any]] = {}
        self._preloaded_own: dict[str, tuple[Any, Any]] = {}  # full fine-tuning models made early
        self._preload_errors: dict[str, Exception] = {}  # create_model's error, for the run it was for
        self._references: dict[str, Any] = {}  # DPO reference models (ref_model_name), by reference_key

    @property
    def create_model(self) -> Callable[[dict[str, Any]], tuple[Any, Any]]:
        """The user's create_model (an executor in another process builds its own registry from it)."""
        return self._create_model

    def _create(self, model_config: dict[str, Any]) -> tuple[Any, Any]:
        """The user's `create_model` on `model_config` with its `model_kwargs` made to work on this
        machine (`trainers.model_kwargs`: 16-bit dtypes -> float32 on CPU, 4/8-bit flags ->
        quantization_config), each change and a CPU model left in 16 bits warned about."""
        import warnings

        from rapidfire_core.automl.translate import gpu_available
        from rapidfire_core.errors import ConfigTranslationWarning
        from rapidfire_core.trainers.model_kwargs import for_device, sixteen_bit_warning

        gpu = gpu_available()
        kwargs, messages = for_device(model_config.get("model_kwargs") or {}, gpu)
        for message in messages:
            warnings.warn(message, ConfigTranslationWarning, stacklevel=3)
        model, tokenizer = check_created(self._create_model({**model_config, "model_kwargs": kwargs}))
        late = None if gpu else sixteen_bit_warning(model)
        if late is not None:
            warnings.warn(late, ConfigTranslationWarning, stacklevel=3)
        return model, tokenizer

    def preload(self, model_config: dict[str, Any], lora_config, seed: int, share_key_extra: dict) -> None:
        """Make the model the run (`model_config`, `lora_config`, `seed`) will attach to, now.

        The next `attach` of that run takes it (or raises the error `create_model` raised
        here); a CreateModelContractError is raised at once (module docstring)."""
        from transformers import set_seed

        key = (
            self._own_key(model_config, seed, share_key_extra)
            if lora_config is None
            else (base_model_key(model_config, share_key_extra))
        )
        if key in self._bases or key in self._preloaded_own or key in self._preload_errors:
            return
        try:
            if lora_config is None:
                set_seed(seed)  # as attach makes a full fine-tuning model: same weights
                self._preloaded_own[key] = self._create(model_config)
            else:
                self._bases[key] = self._create(model_config)
        except CreateModelContractError:
            raise
        except Exception as exc:  # noqa: BLE001 - the run that needs this model fails with it
            self._preload_errors[key] = exc

    @staticmethod
    def _own_key(model_config: dict[str, Any], seed: int, share_key_extra: dict) -> str:
        return "own:" + base_model_key(model_config, {**share_key_extra, "seed": seed})

    def _raise_preload_error(self, key: str) -> None:
        error = self._preload_errors.pop(key, None)
        if error is not None:
            raise error  # once: a later run on the same model calls create_model again

    def attach(
        self, model_config: dict[str, Any], lora_config, adapter_name: str, seed: int, share_key_extra: dict
    ) -> AttachedModel:
        from peft import PeftModel, get_peft_model
        from transformers import set_seed

        if lora_config is None:  # full fine-tuning: a model of its own
            own_key = self._own_key(model_config, seed, share_key_extra)
            self._raise_preload_error(own_key)
            preloaded = self._preloaded_own.pop(own_key, None)
            if preloaded is None:
                set_seed(seed)
                preloaded = self._create(model_config)
            model, tokenizer = preloaded
            return AttachedModel(model, tokenizer, None)

        key = base_model_key(model_config, share_key_extra)
        self._raise_preload_error(key)
        if key not in self._bases:
            self._bases[key] = self._create(model_config)
        model, tokenizer = self._bases[key]
        set_seed(seed)
        if isinstance(model, PeftModel):
            model.add_adapter(adapter_name, lora_config)
        else:
            model = get_peft_model(model, lora_config, adapter_name=adapter_name)
            self._bases[key] = (model, tokenizer)
        return AttachedModel(model, tokenizer, adapter_name)

    def reference(self, model_config: dict[str, Any], disable_dropout: bool) -> Any:
        """The DPO reference model a run's `ref_model_name` names, made by the user's
        `create_model` once and shared by every run that names the same one.

        `create_model` receives the run's model config with `model_name = ref_model_name`,
        `model_type = ref_model_type or model_type` and `model_kwargs = ref_model_kwargs or
        model_kwargs` (translated for this machine like any base); the tokenizer it returns is not
        used (the run's tokenizer tokenizes for both models). The model is frozen (no gradients, eval
        mode). TRL's DPOTrainer sets every dropout of its reference to p=0 when `disable_dropout`,
        so runs that differ there get separate references."""
        config = reference_model_config(model_config)
        key = _stable_key(
            {k: config.get(k) for k in ("model_name", "model_type", "model_kwargs")}
            | {"disable_dropout": bool(disable_dropout)}
        )
        if key not in self._references:
            model, _ = self._create(config)
            model.requires_grad_(False)
            model.eval()
            self._references[key] = model
        return self._references[key]

    def free_adapter_name(self, adapter_name: str) -> None:
        """Make `adapter_name` free for a new adapter: discard it, and where it is its base's
        last adapter (which PEFT cannot delete) let an unused spare adapter of the same shape
        take its place first. For a run placed again on an executor that held it before
        (`cluster.executor_actor`)."""
        for model, _ in self._bases.values():
            config = getattr(model, "peft_config", {})
            if adapter_name in config and len(config) == 1:
                model.add_adapter("rapidfire_spare", config[adapter_name])
        self.discard_adapter(adapter_name)

    def discard_adapter(self, adapter_name: str) -> None:
        """Free a failed or deleted run's adapter, wherever it was attached (other runs on the
        same base are unaffected). PEFT cannot delete a model's last adapter: that one stays,
        unused, until the base model goes."""
        for model, _ in self._bases.values():
            if adapter_name in getattr(model, "peft_config", {}):
                others = [name for name in model.peft_config if name != adapter_name]
                if others:
                    model.delete_adapter(adapter_name)
