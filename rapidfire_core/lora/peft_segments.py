"""Run a PEFT LoRA model's adapters per segment of a `LoraBatch`: the fused cohort forward.

A cohort's runs keep their adapters where the time-sliced engine keeps them: one named PEFT
adapter per run on the shared base (so saving a plain PEFT adapter, warm starts, checkpoints
and TRL's own model checks are unchanged). For a fused step the PEFT layers' own forward is
switched off and each `peft.tuners.lora.Linear` computes, through a forward hook, the
segment math of `lora.layer` on its own `lora_A` / `lora_B` weights::

    with segment_forward(peft_model), lora_batch(LoraBatch([("run_1", 2 * 64), ("run_2", 4 * 64)])):
        out = peft_model(input_ids=ids)          # 6 sequences of 64 tokens: rows of run_1, then run_2

Outside `segment_forward` (a run evaluating, generating, or training time-sliced) the hooks
do nothing and PEFT computes as usual. The batch is a context variable (`lora.context`), so
only the thread that runs the fused step sees it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .context import current_lora_batch, in_backward
from .layer import AdapterSpec, add_segment_adapters
from .run_streams import stream_dropout

HOOKED_ATTR = "_rapidfire_segment_hook"
_LAYERS_ATTR = "_rapidfire_lora_layers"  # (adapter names, LoRA layers) of a PeftModel


class UnfusableAdapter(ValueError):
    """An adapter whose layers the segment math does not cover (DoRA, LoRA on embeddings, ...)."""


class PeftAdapterSet:
    """One PEFT LoRA linear layer seen as an `AdapterSet` (`lora.layer`): its adapters' specs
    read from PEFT's own per-adapter settings, its A/B modules used as they are."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.in_features = int(layer.in_features)
        self.out_features = int(layer.out_features)
        self.lora_A = layer.lora_A
        self.lora_B = layer.lora_B

    @property
    def specs(self) -> dict[str, AdapterSpec]:
        layer = self.layer
        out = {}
        for name in layer.lora_A:
            dropout = layer.lora_dropout[name]
            out[name] = AdapterSpec(
                r=int(layer.r[name]),
                lora_alpha=float(layer.lora_alpha[name]),
                lora_dropout=float(dropout.p) if isinstance(dropout, nn.Dropout) else 0.0,
                use_rslora=bool(layer.use_rslora.get(name, False)),
            )
        return out

    def names(self) -> tuple[str, ...]:
        return tuple(self.layer.lora_A.keys())


def peft_lora_layers(model: nn.Module) -> list[nn.Module]:
    """Every PEFT LoRA layer of ``model`` (any kind: the caller checks which it can fuse).

    A fused step asks several times per member (~1000 modules to walk on SmolLM2-135M), so the
    list is kept on a `PeftModel` until its set of adapters changes (adding an adapter on other
    target modules makes new LoRA layers)."""
    from peft.tuners.lora import LoraLayer

    key = tuple(getattr(model, "peft_config", None) or ())
    cached = model.__dict__.get(_LAYERS_ATTR)
    if key and cached is not None and cached[0] == key:
        return cached[1]
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if key:
        model.__dict__[_LAYERS_ATTR] = (key, layers)
    return layers


def check_fusable(model: nn.Module, adapter_name: str) -> None:
    """Raise `UnfusableAdapter` if adapter ``adapter_name`` of ``model`` has a layer the segment
    math does not compute exactly as PEFT does."""
    from peft.tuners.lora import Linear

    config = getattr(model, "peft_config", {}).get(adapter_name)
    if config is not None and (
        getattr(config, "modules_to_save", None) or getattr(config, "trainable_token_indices", None)
    ):
        # Per-adapter copies of whole modules (or token rows) compute with the active adapter's
        # copy only: every row of a fused batch would go through one run's copy.
        raise UnfusableAdapter(
            f"adapter {adapter_name!r} trains modules_to_save or trainable tokens, which do not fuse"
        )
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and module.p > 0 and ".lora_dropout." not in f".{name}.":
            # Drawn once for the whole fused batch from one generator: not each run's own masks.
            raise UnfusableAdapter(f"the base model has its own dropout ({name}, p={module.p}), not fusable")
    for layer in peft_lora_layers(model):
        if adapter_name not in getattr(layer, "lora_A", {}) and adapter_name not in getattr(
            layer, "lora_embedding_A", {}
        ):
            continue
        if type(layer) is not Linear:
            raise UnfusableAdapter(
                f"adapter {adapter_name!r} has a {type(layer).__name__} layer (only Linear fuses)"
            )
        if adapter_name in layer.lora_variant:
            raise UnfusableAdapter(
                f"adapter {adapter_name!r} uses a LoRA variant (DoRA, ...), which does not fuse"
            )
        if getattr(layer, "fan_in_fan_out", False):
            raise UnfusableAdapter(f"adapter {adapter_name!r} has fan_in_fan_out layers, which do not fuse")
        if layer.lora_B[adapter_name].bias is not None:
            raise UnfusableAdapter(f"adapter {adapter_name!r} has lora_bias, which does not fuse")


def _segment_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    batch = current_lora_batch()
    if batch is None or not module._disable_adapters:
        return None  # not a fused step: PEFT's own forward computed the output
    adapters: PeftAdapterSet = module.__dict__[HOOKED_ATTR]
    x = args[0]
    batch = batch.at_rows(x.numel() // adapters.in_features)
    layout = batch.layout_for(adapters.names())
    if not layout.active:
        return None
    training = module.training
    if training and batch.streams is not None:
        # Each run's mask from its own stream, shaped as its own PEFT layer draws it (lora.run_streams).
        specs = adapters.specs
        dropouts = [specs[name].lora_dropout if name in specs else 0.0 for name in batch.segment_adapters]
        if any(p > 0 for p in dropouts):
            x = stream_dropout(x, batch.segment_rows, batch.streams, dropouts, id(module), in_backward())
        training = False  # applied above
    return add_segment_adapters(adapters, x, output, batch, layout, training)


def switch_active_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make ``adapter_name`` the adapter PEFT's forward uses, as PEFT's `set_adapter` does, but
    without its walk over every module and parameter (~20 ms on SmolLM2-135M with 8 adapters):
    each LoRA layer's active adapter and the tuner's are set; ``requires_grad`` flags stay as
    they are. For a fused member between its hand-offs, where the cohort sets the flags of every
    member's adapter (`scheduler.cohort`); only adapters that `check_fusable` accepts (LoRA
    layers only, no modules_to_save), on a `PeftModel`."""
    for layer in peft_lora_layers(model):
        layer._active_adapter = [adapter_name]
    model.active_adapter = adapter_name  # the PeftModel's own record, as its set_adapter keeps
    model.base_model.active_adapter = adapter_name  # the tuner's (LoraModel)


def install_segment_hooks(model: nn.Module) -> None:
    """Hook every PEFT LoRA Linear of ``model`` once (idempotent; adapters added later are covered:
    the hook reads a layer's adapters on every call)."""
    from peft.tuners.lora import Linear

    for layer in peft_lora_layers(model):
        if type(layer) is Linear and HOOKED_ATTR not in layer.__dict__:
            layer.__dict__[HOOKED_ATTR] = PeftAdapterSet(layer)
            layer.register_forward_hook(_segment_hook)


@contextlib.contextmanager
def segment_forward(model: nn.Module) -> Iterator[None]:
    """Inside the block, ``model``'s LoRA layers compute per segment of the active `LoraBatch`
    (rows of no segment adapter, or with no batch active: the base layer only, like PEFT's
    `disable_adapter()`). PEFT's own flag is set directly: its `enable_adapters` would also
    flip `requires_grad` of every adapter, and the fused step trains them."""
    install_segment_hooks(model)
    layers = peft_lora_layers(model)
    before = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, before, strict=True):
            layer._disable_adapters = flag
