"""Put MultiLoraLinear layers into a Hugging Face model, one adapter (run) at a time.

Each adapter is described by a ``peft.LoraConfig`` (or RapidFire's ``RFLoraConfig``,
a subclass) and matched to module names with PEFT's own matcher
(``check_target_module_exists``: lists, suffixes, regexes, ``layers_to_transform``,
``exclude_modules``; ``"all-linear"`` is expanded like PEFT does), so an adapter lands
on exactly the modules PEFT would pick. Adapters may target different modules: a layer
holds only the adapters that target it, and the batch's rows of the others pass through.

    inject_multi_lora(model, {"run-a": LoraConfig(r=8, target_modules=["q_proj", "v_proj"]),
                              "run-b": LoraConfig(r=32, target_modules="all-linear")})
    params_a = lora_adapter_parameters(model, "run-a")      # its own optimizer
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping

import torch
from torch import nn

from .layer import MultiLoraLinear

CONFIGS_ATTR = "_rapidfire_lora_configs"  # model attribute: {adapter name: LoraConfig as given}


def _unsupported_fields(config) -> list[str]:
    problems = []
    if getattr(config, "use_dora", False):
        problems.append("use_dora=True (DoRA)")
    if getattr(config, "lora_bias", False):
        problems.append("lora_bias=True")
    if getattr(config, "bias", "none") != "none":
        problems.append(f"bias={config.bias!r} (only 'none')")
    if getattr(config, "modules_to_save", None):
        problems.append(f"modules_to_save={config.modules_to_save!r}")
    if getattr(config, "target_parameters", None):
        problems.append(f"target_parameters={config.target_parameters!r}")
    if getattr(config, "use_rslora", False) and (
        getattr(config, "rank_pattern", None) or getattr(config, "alpha_pattern", None)
    ):
        problems.append("use_rslora with rank_pattern/alpha_pattern")
    init = getattr(config, "init_lora_weights", True)
    if not (init is True or init is False or (isinstance(init, str) and init.lower() == "gaussian")):
        problems.append(f"init_lora_weights={init!r} (True, False or 'gaussian')")
    return problems


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, MultiLoraLinear))


def _candidate_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) in ``named_modules`` order, treating a MultiLoraLinear as the linear it wraps."""
    out, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue  # base_layer / lora_A / lora_B of a wrapper: never a target themselves
        if isinstance(module, MultiLoraLinear):
            inside.append(name)
        out.append((name, module))
    return out


def _all_linear_names(model: nn.Module, candidates: list[tuple[str, nn.Module]]) -> set[str]:
    """PEFT's "all-linear": every linear layer except the output embedding (the LM head)."""
    names = {name for name, m in candidates if _is_linear(m)}
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    for name, m in candidates:
        if out_emb is not None and (m is out_emb or getattr(m, "base_layer", None) is out_emb):
            names.discard(name)
    return names


def matched_module_names(model: nn.Module, config) -> list[str]:
    """Names of the modules ``config`` targets, in model order; raises for non-linear targets."""
    from peft.tuners.tuners_utils import check_target_module_exists

    candidates = _candidate_modules(model)
    match_config = config
    if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
        match_config = copy.copy(config)
        match_config.target_modules = _all_linear_names(model, candidates)
    if not match_config.target_modules:
        raise ValueError("LoraConfig.target_modules is empty: name the modules the adapter should train")
    names = []
    for name, module in candidates:
        if not name or not check_target_module_exists(match_config, name):
            continue
        if not _is_linear(module):
            raise ValueError(
                f"target_modules={config.target_modules!r} matches {name!r}, a {type(module).__name__}: "
                "multi-LoRA supports torch.nn.Linear layers only"
            )
        names.append(name)
    if not names:
        raise ValueError(
            f"target_modules={config.target_modules!r} matches no module of {type(model).__name__}"
        )
    return names


def _pattern_value(pattern: Mapping[str, float] | None, key: str, default):
    if not pattern:
        return default
    from peft.utils.other import get_pattern_key

    return pattern.get(get_pattern_key(pattern.keys(), key), default)


def add_lora_adapter(
    model: nn.Module,
    name: str,
    config,
    *,
    seed: int | None = None,
    autocast_adapter_dtype: bool = True,
    freeze_base: bool = True,
) -> list[str]:
    """Add adapter ``name`` (a ``LoraConfig``) to every module it targets; returns their names.

    ``seed``: initialise this adapter from ``torch.manual_seed(seed)`` without touching the
    caller's RNG stream, so a run's init does not depend on which runs were added before it
    (and equals PEFT's ``get_peft_model`` under the same seed). ``freeze_base``: set
    ``requires_grad=False`` on every parameter that is not a LoRA weight, as PEFT does.
    """
    problems = _unsupported_fields(config)
    if problems:
        raise ValueError(f"adapter {name!r}: multi-LoRA does not support " + "; ".join(problems))
    configs: dict = model.__dict__.setdefault(CONFIGS_ATTR, {})
    if name in configs:
        raise ValueError(f"adapter {name!r} already exists (adapters: {list(configs)})")
    targets = matched_module_names(model, config)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        for module_name in targets:
            module = model.get_submodule(module_name)
            if not isinstance(module, MultiLoraLinear):
                module = MultiLoraLinear(module).train(module.training)  # an eval model stays in eval
                model.set_submodule(module_name, module)
            module.add_adapter(
                name,
                r=_pattern_value(config.rank_pattern, module_name, config.r),
                lora_alpha=_pattern_value(config.alpha_pattern, module_name, config.lora_alpha),
                lora_dropout=config.lora_dropout,
                use_rslora=config.use_rslora,
                init_lora_weights=config.init_lora_weights,
                autocast_adapter_dtype=autocast_adapter_dtype,
            )
    configs[name] = copy.deepcopy(config)
    if freeze_base:
        lora_ids = {id(p) for m in model.modules() if isinstance(m, MultiLoraLinear) for p in _lora_params(m)}
        for p in model.parameters():
            if id(p) not in lora_ids:
                p.requires_grad_(False)
    return targets


def inject_multi_lora(
    model: nn.Module,
    adapters: Mapping[str, object],
    *,
    seed: int | Mapping[str, int] | None = None,
    **kwargs,
) -> nn.Module:
    """``add_lora_adapter`` for each (name, LoraConfig) in order; returns the model (changed in place).

    ``seed``: None (the caller's RNG stream, drawn in order), a ``{name: seed}`` mapping, or an
    int ``s``: adapter i (in order) is initialised from ``s + i``, so adapters of equal shape
    start from different weights, and adapter i equals PEFT's ``get_peft_model`` under
    ``torch.manual_seed(s + i)``. Other keyword arguments go to every ``add_lora_adapter``.
    """
    for index, (name, config) in enumerate(adapters.items()):
        if isinstance(seed, Mapping):
            if name not in seed:
                raise KeyError(f"seed mapping has no seed for adapter {name!r}")
            own_seed = int(seed[name])
        else:
            own_seed = None if seed is None else int(seed) + index
        add_lora_adapter(model, name, config, seed=own_seed, **kwargs)
    return model


def _lora_params(module: MultiLoraLinear):
    yield from module.lora_A.parameters()
    yield from module.lora_B.parameters()


def multi_lora_layers(model: nn.Module) -> dict[str, MultiLoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MultiLoraLinear)}


def lora_adapter_names(model: nn.Module) -> list[str]:
    return list(model.__dict__.get(CONFIGS_ATTR, {}))


def lora_adapter_config(model: nn.Module, name: str):
    configs = model.__dict__.get(CONFIGS_ATTR, {})
    if name not in configs:
        raise KeyError(f"no adapter {name!r} in this model (adapters: {list(configs)})")
    return configs[name]


def lora_adapter_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """{qualified name: parameter} of adapter ``name``: what its run's optimizer updates."""
    lora_adapter_config(model, name)  # clear error for an unknown name
    out = {}
    for prefix, layer in multi_lora_layers(model).items():
        if name in layer.specs:
            out[f"{prefix}.lora_A.{name}.weight"] = layer.lora_A[name].weight
            out[f"{prefix}.lora_B.{name}.weight"] = layer.lora_B[name].weight
    return out


def lora_adapter_sets(model: nn.Module) -> set[tuple[str, ...]]:
    """The distinct adapter-name tuples of the model's layers (for ``LoraBatch(adapter_sets=...)``)."""
    return {layer.adapter_names for layer in multi_lora_layers(model).values() if layer.specs}


def remove_lora_adapter(model: nn.Module, name: str) -> None:
    """Delete adapter ``name`` from every layer (layers left without adapters stay wrapped)."""
    lora_adapter_config(model, name)
    for layer in multi_lora_layers(model).values():
        if name in layer.specs:
            layer.delete_adapter(name)
    del model.__dict__[CONFIGS_ATTR][name]


def unload_multi_lora(model: nn.Module) -> nn.Module:
    """Put every wrapped base layer back and forget all adapters; returns the model."""
    for module_name, layer in multi_lora_layers(model).items():
        model.set_submodule(module_name, layer.base_layer)
    model.__dict__.pop(CONFIGS_ATTR, None)
    return model
