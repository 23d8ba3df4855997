"""Base models shared by runs, with one named LoRA adapter per run.

`create_model(model_config)` (the user's function, as in the seeds) is called ONCE per
distinct base: runs whose (model_name, model_type, model_kwargs, tokenizer_kwargs) and
`sharing_constraints` (training settings that alter the model object) agree and that train a
LoRA adapter share one model object; each run adds its own named adapter and the
scheduler activates it when the run has the turn. Runs without a peft config (full fine-tuning)
get a model of their own.

Adapter initialisation matches stock TRL: TRL's trainers call `set_seed(args.seed)` and then
`get_peft_model`, so an adapter created here under `set_seed(args.seed)` has the same initial
weights.
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


def sharing_constraints(training_args) -> dict[str, Any]:
    """Training settings that change the model object itself, so runs must agree to share it.

    - mixed precision: accelerate applies autocast by wrapping `model.forward` when a trainer
      prepares the model, so a bf16 run would impose bf16 on an fp32 run sharing its model;
    - DPO/GRPO `disable_dropout`: TRL sets every dropout module of the model to p=0;
    - `neftune_noise_alpha`: transformers hooks noise into the model's embeddings during train();
    - `use_liger_kernel`: Liger patches the model's modules.
    """
    precision = "fp16" if training_args.fp16 else "bf16" if training_args.bf16 else "no"
    return {
        "mixed_precision": precision,
        "disable_dropout": getattr(training_args, "disable_dropout", None),
        "neftune_noise_alpha": training_args.neftune_noise_alpha,
        "use_liger_kernel": training_args.use_liger_kernel,
    }


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


class ModelRegistry:
    """Creates each distinct base model once and attaches run adapters to it."""

    def __init__(self, create_model: Callable[[dict[str, Any]], tuple[Any, Any]]) -> None:
        self._create_model = create_model
        self._bases: dict[str, tuple[Any, Any]] = {}

    def _create(self, model_config: dict[str, Any]) -> tuple[Any, Any]:
        created = self._create_model(model_config)
        if not (isinstance(created, (tuple, list)) and len(created) == 2):
            raise TypeError(
                "create_model(model_config) must return a (model, tokenizer) tuple, "
                f"got {type(created).__name__}"
            )
        return created[0], created[1]

    def attach(
        self, model_config: dict[str, Any], lora_config, adapter_name: str, seed: int, share_key_extra: dict
    ) -> AttachedModel:
        from peft import PeftModel, get_peft_model
        from transformers import set_seed

        if lora_config is None:  # full fine-tuning: a model of its own
            set_seed(seed)
            model, tokenizer = self._create(model_config)
            return AttachedModel(model, tokenizer, None)

        key = base_model_key(model_config, share_key_extra)
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

    def discard_adapter(self, adapter_name: str) -> None:
        """Free a failed or deleted run's adapter, wherever it was attached (other runs on the
        same base are unaffected). PEFT cannot delete a model's last adapter: that one stays,
        unused, until the base model goes."""
        for model, _ in self._bases.values():
            if adapter_name in getattr(model, "peft_config", {}):
                others = [name for name in model.peft_config if name != adapter_name]
                if others:
                    model.delete_adapter(adapter_name)
