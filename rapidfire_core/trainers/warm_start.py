"""Warm start of a cloned run from its parent's LoRA adapter (and optimizer moments).

`capture_parent` copies, at the moment the clone command is applied, each LoRA layer's
parent factors and scaling, and the Adam moments of those tensors when the parent's optimizer
has state. `apply_weights` then sets the clone's fresh adapter so that, per layer,

    scale_c * B_c @ A_c  ==  scale_p * B_p @ A_p        (the parent's update of W)

- same rank: A_c = A_p, B_c = B_p * scale_p / scale_c (an edited lora_alpha keeps the function);
- larger rank: the first r_p rows of A_c / columns of B_c as above, the rest keep the clone's
  own initialisation (random A, zero B: they add nothing until trained);
- smaller rank: the best rank-r_c approximation of the parent's update (truncated SVD, split
  evenly between A_c and B_c);
- a layer the clone targets that the parent did not: the clone's own initialisation; a layer
  only the parent targets is not carried over (recorded in `WarmStartReport.dropped`).

Moments are copied (with the parent's step count, so Adam's bias correction continues) for a
tensor whose shape and scaling are unchanged; otherwise that tensor starts with fresh moments
(they describe another parametrisation). The clone's learning rate, schedule, warmup and every
other hyperparameter are its own: its scheduler starts at step 0 with its own settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback


@dataclass
class _LayerState:
    A: torch.Tensor  # (r_p, in)
    B: torch.Tensor  # (out, r_p)
    scale: float
    moments: dict[str, dict[str, Any]]  # "A"/"B" -> Adam state (step, exp_avg, exp_avg_sq)


@dataclass
class WarmStartReport:
    copied: list[str] = field(default_factory=list)  # layers whose update was carried over
    resized: list[str] = field(default_factory=list)  # ... through a rank change
    fresh: list[str] = field(default_factory=list)  # clone layers the parent did not have
    dropped: list[str] = field(default_factory=list)  # parent layers the clone does not target
    moments: int = 0  # tensors whose optimizer moments were carried over


def _lora_layers(model: Any, adapter: str) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in getattr(module, "lora_A", {}):
            out[name] = module
    return out


def _optimizer_state(optimizer: Any, param: torch.Tensor) -> dict[str, Any] | None:
    if optimizer is None:
        return None
    state = optimizer.state.get(param)
    if not state:
        return None
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in state.items()}


def capture_parent(model: Any, adapter: str, optimizer: Any = None) -> dict[str, _LayerState]:
    """A snapshot of the parent's adapter (and moments) by layer name; later parent steps
    do not change it."""
    layers = {}
    for name, module in _lora_layers(model, adapter).items():
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        moments = {}
        for key, param in (("A", a), ("B", b)):
            state = _optimizer_state(optimizer, param)
            if state is not None:
                moments[key] = state
        layers[name] = _LayerState(
            a.detach().clone(), b.detach().clone(), float(module.scaling[adapter]), moments
        )
    return layers


class WarmStart:
    """Carries a captured parent state into one clone: weights when built, moments at train begin."""

    def __init__(self, parent_run_id: int, layers: dict[str, _LayerState]) -> None:
        self.parent_run_id = parent_run_id
        self.layers = layers
        self.report = WarmStartReport()
        self._pending_moments: list[tuple[torch.Tensor, dict[str, Any]]] = []

    @torch.no_grad()
    def apply_weights(self, model: Any, adapter: str) -> WarmStartReport:
        clone_layers = _lora_layers(model, adapter)
        self.report.dropped = sorted(set(self.layers) - set(clone_layers))
        for name, module in clone_layers.items():
            parent = self.layers.get(name)
            if parent is None:
                self.report.fresh.append(name)
                continue
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight  # (r_c, in), (out, r_c)
            scale = float(module.scaling[adapter])
            r_p, r_c = parent.A.shape[0], a.shape[0]
            ratio = parent.scale / scale
            if r_c >= r_p:
                a[:r_p].copy_(parent.A)
                b[:, :r_p].copy_(parent.B * ratio)
                if r_c == r_p and ratio == 1.0:
                    for key, param in (("A", a), ("B", b)):
                        if key in parent.moments:
                            self._pending_moments.append((param, parent.moments[key]))
                (self.report.copied if r_c == r_p else self.report.resized).append(name)
            else:
                delta = parent.scale * (parent.B.double() @ parent.A.double())  # (out, in)
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                root = (s[:r_c] / scale).sqrt()
                b.copy_((u[:, :r_c] * root).to(b.dtype))
                a.copy_((root[:, None] * vh[:r_c]).to(a.dtype))
                self.report.resized.append(name)
        return self.report

    def callback(self) -> TrainerCallback:
        """Loads the carried moments into the clone's optimizer once it exists (train begin)."""
        return _LoadMoments(self)


class _LoadMoments(TrainerCallback):
    def __init__(self, warm: WarmStart) -> None:
        self.warm = warm

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        pending, self.warm._pending_moments = self.warm._pending_moments, []
        if optimizer is None or not pending:
            return
        for param, moments in pending:
            optimizer.state[param] = {
                k: v.to(param.device) if torch.is_tensor(v) and v.dim() > 0 else v for k, v in moments.items()
            }
        self.warm.report.moments = len(pending)
