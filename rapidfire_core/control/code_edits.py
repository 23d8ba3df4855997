"""Which clone edits can make the training process load code or touch files it names.

A clone's changes become arguments of `from_pretrained`, of the user's `create_model`, and of
the trainer. Some of those load and run code chosen by whoever wrote the edit:

- a model or tokenizer to load (`model_name`, `ref_model_name`, `tokenizer`): a hub repo or
  folder may hold `modeling_*.py`, and with `trust_remote_code` it is imported;
- loader keyword dicts (`model_kwargs`, `tokenizer_kwargs`, `ref_model_kwargs`,
  `train.model_init_kwargs`, `generation_config`): `trust_remote_code`, `revision`,
  `attn_implementation="<hub kernel repo>"`, `custom_generate`, `quantization_config`, ...;
- functions and classes (`reward_funcs`, `callbacks`, `formatting_func`, `compute_metrics`,
  `model_type`);
- any path, folder, file, module, backend, kernel, plugin or hub name (`output_dir`,
  `deepspeed`, `fsdp_config`, `torch_compile_backend`, `use_liger_kernel`, `push_to_hub`,
  `report_to`, `vllm_server_host`, `resume_from_checkpoint`, ...): they read, write or send
  files, or import what they name.

The dashboard refuses such edits unless it was started with `allow_code_edits` (see
docs/security.md): a dashboard is reachable by anyone holding its token, while these edits
amount to running code as the user who trains. The classification is by knob name, because
the values it would take to be safe are open-ended; a name not listed here is a number, a
flag or a choice among the trainer's own options (learning_rate, r, lora_alpha,
target_modules, loss_type, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Whole knob names (the last part of a dotted key, or its first part for RFModelConfig fields).
_CODE_FIELDS = {
    "model_name": "names a model to load (its folder or hub repo may hold code that is run)",
    "ref_model_name": "names a model to load (its folder or hub repo may hold code that is run)",
    "tokenizer": "names a tokenizer to load (its folder or hub repo may hold code that is run)",
    "model_type": "chooses the class that loads the model",
    "ref_model_type": "chooses the class that loads the reference model",
    "reward_funcs": "names reward models or functions to load",
    "callbacks": "is code run by the trainer",
    "formatting_func": "is code run on every row",
    "compute_metrics": "is code run at evaluation",
    "generation_config": "holds generate() options that can load code (custom_generate, trust_remote_code)",
    "generation_kwargs": "holds generate() options that can load code (custom_generate, trust_remote_code)",
    "model_init_kwargs": "is passed to from_pretrained (trust_remote_code, revision, ...)",
    "ref_model_init_kwargs": "is passed to from_pretrained (trust_remote_code, revision, ...)",
    "report_to": "chooses tracker integrations to import and send data to",
    "resume_from_checkpoint": "names a folder to load state from",
    "accelerator_config": "configures accelerate from a dict or a file",
    "quantization_config": "chooses a quantizer (and its kernels) to load",
}
_LOADER_KWARGS = ("model_kwargs", "tokenizer_kwargs", "ref_model_kwargs")
# Keys of the loader dicts that only pick a number format or a cache switch.
_SAFE_LOADER_KEYS = frozenset({"torch_dtype", "dtype", "use_cache", "low_cpu_mem_usage"})
# attn_implementation values that name a built-in; anything else may be a hub kernel repo.
_BUILTIN_ATTENTION = frozenset({"eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"})
# Words of a knob name (split at "_" and ".") that mean it names something outside the config.
_CODE_WORDS = {
    "path": "is a path",
    "dir": "is a folder",
    "file": "is a file",
    "hub": "names or pushes to a hub repo",
    "remote": "allows remote code",
    "revision": "chooses a revision of a repo to load",
    "kernel": "loads kernels",
    "kernels": "loads kernels",
    "module": "names a module",
    "modules": None,  # target_modules / modules_to_save name layers of the model, not Python modules
    "import": "imports code",
    "backend": "chooses a backend to import",
    "plugin": "loads a plugin",
    "deepspeed": "configures DeepSpeed from a file or dict",
    "fsdp": "configures FSDP from a file or dict",
    "vllm": "talks to a vLLM server or loads vLLM",
    "liger": "loads Liger kernels",
    "trackio": "sends data to a tracker",
    "custom": "loads custom code (custom_generate)",
    "megatron": "names a Megatron module to import",
}


def code_loading_reason(key: str, value: Any = None) -> str | None:
    """Why the clone change `key=value` can load code or touch files (None if it cannot).

    `key` is the change's knob name as written (`model_name`, `train.output_dir`,
    `model_kwargs.trust_remote_code`, ...)."""
    parts = [p for p in key.split(".") if p]
    if not parts:
        return None
    head = parts[-1] if parts[0] in ("train", "peft") else parts[0]
    if head in _LOADER_KWARGS:
        inner = parts[1:]
        if not inner:
            keys = list(value) if isinstance(value, Mapping) else []
            unsafe = [k for k in keys if code_loading_reason(f"{head}.{k}", value[k]) is not None]
            if not isinstance(value, Mapping) or unsafe:
                return f"is passed to from_pretrained ({', '.join(map(str, unsafe)) or 'a whole dict'})"
            return None
        name = inner[-1]
        if name in _SAFE_LOADER_KEYS:
            return None
        if name == "attn_implementation" and value in _BUILTIN_ATTENTION:
            return None
        return (
            "is passed to from_pretrained (of its keys only torch_dtype/dtype, use_cache,"
            " low_cpu_mem_usage and a built-in attn_implementation load no code)"
        )
    for part in parts:
        if part in _CODE_FIELDS:
            return _CODE_FIELDS[part]
        for word in part.split("_"):
            reason = _CODE_WORDS.get(word)
            if reason is not None:
                return reason
            if word in _CODE_WORDS:  # listed as harmless (None)
                break
    return _nested_reason(value)


def _nested_reason(value: Any) -> str | None:
    """A dict value that carries a loader option itself (e.g. {"trust_remote_code": true})."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and (code_loading_reason(k, v) or _nested_reason(v)):
                return f"holds {k!r}, which {code_loading_reason(k, v) or 'can load code'}"
    elif isinstance(value, (list, tuple)):
        for item in value:
            reason = _nested_reason(item)
            if reason:
                return reason
    return None


def code_loading_changes(changes: Mapping[str, Any]) -> dict[str, str]:
    """{knob: reason} for the changes of a clone that can load code (empty if none can)."""
    found = {}
    for key, value in changes.items():
        reason = code_loading_reason(str(key), value)
        if reason is not None:
            found[str(key)] = reason
    return found
