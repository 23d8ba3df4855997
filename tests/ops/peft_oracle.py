"""PEFT's own LoRA layer as the oracle: one ``peft.tuners.lora.Linear`` per adapter, on its rows."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from torch import nn


@dataclass(frozen=True)
class Spec:
    r: int
    alpha: float
    dropout: float = 0.0
    rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (self.r**0.5 if self.rslora else self.r)


class FixedMaskDropout(nn.Module):
    """Dropout with a given keep mask, torch's formula (x * mask / (1 - p)): PEFT given our mask."""

    def __init__(self, keep: torch.Tensor, p: float) -> None:
        super().__init__()
        self.keep, self.p = keep, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.keep / (1.0 - self.p)


class _Holder(nn.Module):
    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin


def peft_lora_linear(base: nn.Linear, spec: Spec, lora_a: torch.Tensor, lora_b: torch.Tensor) -> nn.Module:
    """A PEFT LoRA layer around a copy of ``base`` with the given A (r, K) and B (N, r)."""
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        use_rslora=spec.rslora,
        target_modules=["lin"],
    )
    model = get_peft_model(_Holder(copy.deepcopy(base)), config)
    layer = model.base_model.model.lin
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(lora_a)
        layer.lora_B["default"].weight.copy_(lora_b)
    return layer


def peft_multi_lora(
    base: nn.Linear,
    specs: list[Spec],
    weights: list[tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    segments: list[tuple[int, int, int]],
    grad_out: torch.Tensor,
    keep: torch.Tensor | None = None,
) -> dict[str, object]:
    """Each adapter alone through PEFT on its own rows; returns out, dx, da[i], db[i] of ``sum(out * grad_out)``."""
    x = x.detach().clone().requires_grad_()
    out = torch.empty(x.shape[0], base.out_features, dtype=x.dtype)
    pieces: dict[int, torch.Tensor] = {}
    layers = []
    total = 0
    for i, (spec, (a, b)) in enumerate(zip(specs, weights, strict=True)):
        layer = peft_lora_linear(base, spec, a, b)
        layers.append(layer)
        rows = [torch.arange(s, e) for s, e, slot in segments if slot == i and e > s]
        if not rows:
            continue
        idx = torch.cat(rows)
        if spec.dropout > 0:  # no mask: dropout off (as in eval), else exactly our mask
            drop = FixedMaskDropout(keep[idx], spec.dropout) if keep is not None else nn.Identity()
            layer.lora_dropout["default"] = drop
        pieces[i] = idx
        y = layer(x[idx])
        out[idx] = y.detach()
        total = total + (y * grad_out[idx]).sum()
    unadapted = [torch.arange(s, e) for s, e, slot in segments if slot < 0 and e > s]
    if unadapted:
        idx = torch.cat(unadapted)
        y = base(x[idx])
        out[idx] = y.detach()
        total = total + (y * grad_out[idx]).sum()
    total.backward()
    zero = [(torch.zeros_like(a), torch.zeros_like(b)) for a, b in weights]
    da = [
        layer.lora_A["default"].weight.grad if i in pieces else zero[i][0] for i, layer in enumerate(layers)
    ]
    db = [
        layer.lora_B["default"].weight.grad if i in pieces else zero[i][1] for i, layer in enumerate(layers)
    ]
    return {"out": out, "dx": x.grad, "da": da, "db": db}
