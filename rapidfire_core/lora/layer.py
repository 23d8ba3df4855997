"""MultiLoraLinear: a frozen linear layer shared by any number of LoRA adapters.

For the rows of the current batch (``LoraBatch`` segments)::

    Y = base_layer(X)                                  # frozen W (and bias), any base: nn.Linear, 4-bit...
    for (start, end, name) in segments:
        if name in this layer's adapters:
            Y[start:end] += scale[name] * (drop[name](X[start:end]) @ A[name].T) @ B[name].T

Each adapter keeps its own parameters (``lora_A[name].weight`` (r, K), ``lora_B[name].weight``
(N, r), PEFT's names and init), so each run has its own optimizer. Adapters with no rows
in the batch get no gradient at all (``.grad`` stays None, so their optimizer skips them).

Two paths, same math (both tested against PEFT):

- Triton kernels, where they are enabled for the tensors' device (opt-in until verified on a
  GPU: ``RAPIDFIRE_LORA_BACKEND=triton`` or ``ops.enable_triton_kernels()``; see ``ops._backend``):
  the adapters present in the batch are stacked,
  zero-padded to the largest rank, and the registered ops ``rapidfire::lora_shrink`` /
  ``lora_expand`` run on the stack; autograd slices the stacked gradients back to each
  adapter. Launches per layer do not grow with the number of adapters.
- otherwise (the default, any device): the per-adapter loop of
  ``ops.multi_lora_add_reference`` on the batch's host segment bounds. It beats the ops' own
  reference path, whose per-call custom-op overhead dominates tiny layers.

Precision follows PEFT: the LoRA path runs in the adapters' dtype (x is cast to it),
or in the autocast dtype inside ``torch.autocast``; it is added to the base output in that
output's own dtype (never rounded to the LoRA dtype first), which is the result's dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import _backend
from ..ops.multi_lora import AdapterWeights, draw_keep_mask, multi_lora_add, multi_lora_add_reference
from .context import LoraBatch, SegmentLayout, current_lora_batch


class AdapterNotResident(RuntimeError):
    """A forward reached an adapter whose weights hold no memory: a `memory.StatePool` evicted
    its run and it was not restored (``pool.acquire(run_id)``) before the forward."""


def _evicted(adapters: AdapterSet, names: tuple[str, ...]) -> list[str]:
    """The adapters among ``names`` whose A or B storage the pool released (0 bytes)."""
    return [
        n
        for n in names
        if any(m[n].weight.untyped_storage().nbytes() == 0 for m in (adapters.lora_A, adapters.lora_B))
    ]


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter's hyper-parameters on one layer."""

    r: int
    lora_alpha: float
    lora_dropout: float = 0.0
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        # PEFT: alpha / r, or alpha / sqrt(r) with rsLoRA.
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def _stack_as(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """torch.stack(tensors) in `dtype`: one cast of the stack when the tensors share a dtype (the
    usual case: PEFT keeps every adapter in fp32), else a cast each. Same values either way."""
    if all(t.dtype == tensors[0].dtype for t in tensors):
        return torch.stack(tensors).to(dtype)
    return torch.stack([t.to(dtype) for t in tensors])


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear-like module (also bitsandbytes' 4-bit Linear)."""
    try:
        return int(module.in_features), int(module.out_features)
    except AttributeError:
        raise TypeError(
            f"MultiLoraLinear wraps linear layers with in_features/out_features; got {type(module).__name__}"
        ) from None


def adapter_dtype(base_layer: nn.Module, autocast_adapter_dtype: bool = True) -> torch.dtype:
    """PEFT's rule: the base weight's float dtype, upcast from fp16/bf16 to fp32 by default."""
    weight = getattr(base_layer, "weight", None)
    dtype = weight.dtype if weight is not None and weight.is_floating_point() else torch.float32
    if autocast_adapter_dtype and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return dtype


class MultiLoraLinear(nn.Module):
    """A frozen linear layer plus named LoRA adapters; see the module docstring."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.in_features, self.out_features = linear_features(base_layer)
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.specs: dict[str, AdapterSpec] = {}

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def add_adapter(
        self,
        name: str,
        *,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        use_rslora: bool = False,
        init_lora_weights: bool | str = True,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        """Add adapter ``name``, initialised exactly as PEFT's ``LoraLayer.update_layer`` does.

        Same RNG draws in the same order (nn.Linear's own init of A and B, then A re-drawn,
        B zeroed), on the CPU generator, then moved to the base weight's device: under the
        same seed, A equals the one PEFT creates.
        """
        if not name or "." in name:
            raise ValueError(f"adapter name must be non-empty and contain no '.', got {name!r}")
        if name in self.specs:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        if int(r) <= 0:
            raise ValueError(f"r must be a positive integer, got {r!r}")
        if not 0.0 <= float(lora_dropout) < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
        lora_a = nn.Linear(self.in_features, r, bias=False)
        lora_b = nn.Linear(r, self.out_features, bias=False)
        if init_lora_weights is True:
            nn.init.kaiming_uniform_(lora_a.weight, a=math.sqrt(5))
        elif isinstance(init_lora_weights, str) and init_lora_weights.lower() == "gaussian":
            nn.init.normal_(lora_a.weight, std=1 / r)
        elif init_lora_weights is not False:
            raise ValueError(
                f"init_lora_weights={init_lora_weights!r} is not supported by multi-LoRA "
                "(True, False or 'gaussian')"
            )
        if init_lora_weights is not False:
            nn.init.zeros_(lora_b.weight)
        weight = getattr(self.base_layer, "weight", None)
        device = weight.device if weight is not None else None
        dtype = adapter_dtype(self.base_layer, autocast_adapter_dtype)
        self.lora_A[name] = lora_a.to(device=device, dtype=dtype)
        self.lora_B[name] = lora_b.to(device=device, dtype=dtype)
        self.specs[name] = AdapterSpec(int(r), float(lora_alpha), float(lora_dropout), bool(use_rslora))

    def delete_adapter(self, name: str) -> None:
        if name not in self.specs:
            raise KeyError(f"no adapter {name!r} on this layer (has {list(self.specs)})")
        del self.lora_A[name], self.lora_B[name], self.specs[name]

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        batch = current_lora_batch()
        if batch is None or not self.specs:
            return result
        batch = batch.at_rows(x.numel() // self.in_features)
        layout = batch.layout_for(self.adapter_names)
        if not layout.active:  # none of this layer's adapters has rows in the batch
            return result
        return add_segment_adapters(self, x, result, batch, layout, self.training)

    def extra_repr(self) -> str:
        adapters = ", ".join(
            f"{n}(r={s.r}, alpha={s.lora_alpha:g}, p={s.lora_dropout:g})" for n, s in self.specs.items()
        )
        return f"in_features={self.in_features}, out_features={self.out_features}, adapters=[{adapters}]"


class AdapterSet(Protocol):
    """A linear layer's adapters as the segment math reads them (MultiLoraLinear, or a PEFT LoRA
    layer seen through `lora.peft_segments`): specs and PEFT-named A/B modules per adapter."""

    in_features: int
    out_features: int
    specs: Mapping[str, AdapterSpec]
    lora_A: Mapping[str, nn.Module]
    lora_B: Mapping[str, nn.Module]


def _compute_dtype(adapters: AdapterSet, x: torch.Tensor, first: str) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return adapters.lora_A[first].weight.dtype  # PEFT casts x to the adapter dtype


def _stacked_weights(
    adapters: AdapterSet, names: tuple[str, ...], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (n, R, K), B (n, N, R)) of ``names``, zero-padded to the largest rank R.

    Zero rows of A give zero columns of S, which meet zero columns of B: padding adds
    exact zeros to outputs and gradients, and autograd drops the padded gradient slices.
    """
    r_max = max(adapters.specs[n].r for n in names)
    a, b = [], []
    for n in names:
        missing = r_max - adapters.specs[n].r
        weight_a, weight_b = adapters.lora_A[n].weight, adapters.lora_B[n].weight
        # Pad only the smaller ranks: each pad is a copy and a kernel launch, per layer, per step.
        a.append(F.pad(weight_a, (0, 0, 0, missing)) if missing else weight_a)
        b.append(F.pad(weight_b, (0, missing)) if missing else weight_b)
    return _stack_as(a, dtype), _stack_as(b, dtype)


def _naming_evicted_adapters(add: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``add`` raising `AdapterNotResident` when it fails on an adapter the pool evicted. Checked
    only on failure: a storage query per adapter per layer on every step would tax the hot path."""

    @functools.wraps(add)
    def checked(adapters: AdapterSet, x, result, batch, layout: SegmentLayout, training) -> torch.Tensor:
        try:
            return add(adapters, x, result, batch, layout, training)
        except RuntimeError as error:
            evicted = _evicted(adapters, layout.active)
            if evicted:
                raise AdapterNotResident(
                    f"adapter(s) {evicted} are evicted (a StatePool released their memory): restore them "
                    "with pool.acquire(run_id) or pool.get(run_id) before a forward that uses them"
                ) from error
            raise

    return checked


@_naming_evicted_adapters
def add_segment_adapters(
    adapters: AdapterSet,
    x: torch.Tensor,
    result: torch.Tensor,
    batch: LoraBatch,
    layout: SegmentLayout,
    training: bool,
) -> torch.Tensor:
    """``result`` (the base layer's output for ``x``) plus each segment's adapter of ``adapters``
    (the module docstring's math); dropout only when ``training``. Same shape and dtype as result.
    Raises `AdapterNotResident` if an adapter of the batch is evicted from its device."""
    x2 = x.reshape(-1, adapters.in_features)  # (M, K)
    if x2.shape[0] != layout.num_rows:
        raise ValueError(
            f"MultiLoraLinear got {x2.shape[0]} rows (input shape {tuple(x.shape)}) but the active "
            f"LoraBatch describes {layout.num_rows}: {batch!r}"
        )
    active = layout.active
    dtype = _compute_dtype(adapters, x, active[0])
    scalar_dtype = torch.promote_types(dtype, torch.float32)  # fp32 for the kernels; fp64 stays exact
    keep = drop_scale = None
    dropouts = tuple(adapters.specs[n].lora_dropout for n in active)
    if training and any(p > 0 for p in dropouts):
        # One mask for the whole batch; the backward reuses exactly this mask (saved, not redrawn).
        keep = draw_keep_mask(batch.row_values(layout, dropouts), adapters.in_features, batch.generator)
        drop_scale = batch.floats(tuple(1.0 / (1.0 - p) for p in dropouts), scalar_dtype)
    y2 = result.reshape(-1, adapters.out_features)  # (M, N)
    if not _backend.triton_kernels_enabled(x2):
        out = _add_segment_adapters_torch(adapters, x2, y2, keep, layout, dtype)
        return out.to(result.dtype).reshape(result.shape)
    lora_a, lora_b = _stacked_weights(adapters, active, dtype)
    scales = batch.floats(tuple(adapters.specs[n].scaling for n in active), scalar_dtype)
    # y keeps the base output's dtype (no rounding to the LoRA dtype, no cast copies): the
    # sum comes back in it, as PEFT's `result + lora_out * scaling` cast to result's dtype.
    out = multi_lora_add(
        y2,
        x2.to(dtype),
        lora_a,
        lora_b,
        scales,
        layout.seg_starts,
        layout.seg_slot,
        keep,
        drop_scale,
    )
    return out.to(result.dtype).reshape(result.shape)


def _add_segment_adapters_torch(
    adapters: AdapterSet,
    x2: torch.Tensor,
    y2: torch.Tensor,
    keep: torch.Tensor | None,
    layout: SegmentLayout,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The per-adapter loop on host segment bounds: the CPU path (no padding, no custom-op overhead).

    Same math as the ops; at tiny-model sizes the 4 custom-op calls per layer cost
    more than the matmuls (64x64 layer, N=4: 1.6 ms through the ops vs 0.9 ms here).
    """
    weights = []
    for n in layout.active:
        spec = adapters.specs[n]
        a, b = adapters.lora_A[n].weight.to(dtype), adapters.lora_B[n].weight.to(dtype)
        weights.append(AdapterWeights(a, b, spec.scaling, spec.lora_dropout if keep is not None else 0.0))
    return multi_lora_add_reference(y2, x2.to(dtype), weights, layout.segments, keep)
