"""Multi-LoRA layers for fused cohorts: many adapters, one frozen base, one forward and backward.

- ``MultiLoraLinear``: a frozen linear plus any number of named adapters (own parameters each).
- ``LoraBatch`` / ``lora_batch``: the segment layout of the current step, set by the trainer.
- ``inject_multi_lora`` / ``add_lora_adapter``: wrap an HF model's target modules per ``LoraConfig``.
- ``save_peft_adapter`` / ``load_peft_adapter``: one adapter to/from PEFT's on-disk format.
- ``pack_adapter_batches`` / ``fused_adapters`` / ``per_adapter_losses``: many adapters (of an
  injected model or a PEFT model) in one forward and backward from your own loop, one loss each.

Guide with runnable examples: docs/low-level-api.md.
"""

from .context import (
    LoraBatch,
    SegmentLayout,
    backward_batch,
    current_lora_batch,
    lora_batch,
    single_adapter_batch,
)
from .fused import IGNORE_INDEX, PackedBatch, fused_adapters, pack_adapter_batches, per_adapter_losses
from .inject import (
    add_lora_adapter,
    inject_multi_lora,
    lora_adapter_config,
    lora_adapter_names,
    lora_adapter_parameters,
    lora_adapter_sets,
    matched_module_names,
    multi_lora_layers,
    remove_lora_adapter,
    unload_multi_lora,
)
from .layer import AdapterNotResident, AdapterSpec, MultiLoraLinear
from .peft_export import load_peft_adapter, peft_adapter_state_dict, save_peft_adapter

__all__ = [
    "IGNORE_INDEX",
    "AdapterNotResident",
    "AdapterSpec",
    "LoraBatch",
    "MultiLoraLinear",
    "PackedBatch",
    "SegmentLayout",
    "add_lora_adapter",
    "backward_batch",
    "current_lora_batch",
    "fused_adapters",
    "inject_multi_lora",
    "load_peft_adapter",
    "lora_adapter_config",
    "lora_adapter_names",
    "lora_adapter_parameters",
    "lora_adapter_sets",
    "lora_batch",
    "matched_module_names",
    "multi_lora_layers",
    "pack_adapter_batches",
    "peft_adapter_state_dict",
    "per_adapter_losses",
    "remove_lora_adapter",
    "save_peft_adapter",
    "single_adapter_batch",
    "unload_multi_lora",
]
