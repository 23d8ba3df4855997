"""Move one adapter between a multi-LoRA model and PEFT's on-disk format.

``save_peft_adapter`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` exactly
as ``PeftModel.save_pretrained`` does (keys ``base_model.model.<module>.lora_A.weight``,
adapter name stripped), so any run's result loads with plain PEFT::

    save_peft_adapter(model, "run-a", "out/run-a")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "out/run-a")

``load_peft_adapter`` goes the other way (warm starts, clone-modify): it adds an adapter
from a PEFT directory or state dict.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from .inject import add_lora_adapter, lora_adapter_config, multi_lora_layers

PEFT_PREFIX = "base_model.model."
WEIGHTS_NAME = "adapter_model.safetensors"


def peft_adapter_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name`` in PEFT's saved-key format (detached, on their devices)."""
    lora_adapter_config(model, name)
    state = {}
    for prefix, layer in multi_lora_layers(model).items():
        if name in layer.specs:
            state[f"{PEFT_PREFIX}{prefix}.lora_A.weight"] = layer.lora_A[name].weight.detach()
            state[f"{PEFT_PREFIX}{prefix}.lora_B.weight"] = layer.lora_B[name].weight.detach()
    return state


def save_peft_adapter(
    model: nn.Module,
    name: str,
    save_directory: str | os.PathLike,
    *,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write adapter ``name`` as a PEFT adapter directory; returns its path."""
    from safetensors.torch import save_file

    config = copy.deepcopy(lora_adapter_config(model, name))
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    config.base_model_name_or_path = base_model_name_or_path
    config.inference_mode = True  # what PeftModel.save_pretrained records
    path = Path(save_directory)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in peft_adapter_state_dict(model, name).items()}
    save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    config.save_pretrained(str(path))
    return path


def load_peft_adapter(
    model: nn.Module,
    name: str,
    source: str | os.PathLike | dict[str, torch.Tensor],
    config=None,
    **add_kwargs,
) -> list[str]:
    """Add adapter ``name`` with the weights of a PEFT adapter (directory, or state dict + config).

    Keys may carry PEFT's in-memory adapter name (``lora_A.default.weight``) or not.
    """
    if isinstance(source, (str, os.PathLike)):
        from peft import LoraConfig
        from safetensors.torch import load_file

        config = config or LoraConfig.from_pretrained(str(source))
        state = load_file(str(Path(source) / WEIGHTS_NAME))
    else:
        if config is None:
            raise ValueError("load_peft_adapter from a state dict needs its LoraConfig (config=...)")
        state = source
    targets = add_lora_adapter(model, name, config, **add_kwargs)
    # Normalise "...q_proj.lora_A.<adapter>.weight" to "...q_proj.lora_A.weight".
    normalised = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[-3] in ("lora_A", "lora_B") and parts[-1] == "weight":
            key = ".".join(parts[:-2] + ["weight"])
        normalised[key.removeprefix(PEFT_PREFIX)] = value
    missing = []
    layers = multi_lora_layers(model)
    with torch.no_grad():
        for module_name in targets:
            layer = layers[module_name]
            for part, store in (("lora_A", layer.lora_A), ("lora_B", layer.lora_B)):
                key = f"{module_name}.{part}.weight"
                if key not in normalised:
                    missing.append(key)
                    continue
                store[name].weight.copy_(normalised[key])
    if missing:
        raise KeyError(f"PEFT adapter for {name!r} lacks {len(missing)} weights, e.g. {missing[:3]}")
    return targets
