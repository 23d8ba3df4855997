"""Where a run's trainable state lives, so the pool can pack it and re-home it.

A `TensorRef` names one tensor and knows how to replace it: a parameter's `.data`, or a value
of an optimizer's per-parameter state dict (`exp_avg`, `exp_avg_sq`, `step`, ...). Replacing
`.data` keeps the `Parameter` object, and torch optimizers key their state by that object and
read the state dict at every step, so after re-homing the run trains on the packed views as
it did on the original tensors.

`run_state_refs(model, adapter_name, optimizer)` collects one run's refs:

    params = [p for name, p in model.named_parameters() if adapter_name is a segment of name]
           + [p for group in optimizer.param_groups for p in group["params"]]   # deduplicated
    refs   = [ParamRef(f"param/{name}", p) for name, p in params]
           + [DictRef(f"optim/{name}/{key}", optimizer.state[p], key) for name, p in params
              for key, value in its state if value is a tensor]
"""

from __future__ import annotations

import abc
from typing import Any

import torch

PARAM = "param"
OPTIM = "optim"


class TensorRef(abc.ABC):
    """One state tensor: `get()` the current tensor, `set(t)` to re-home it."""

    __slots__ = ("name", "kind")

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind  # PARAM or OPTIM

    @abc.abstractmethod
    def get(self) -> torch.Tensor: ...

    @abc.abstractmethod
    def set(self, value: torch.Tensor) -> None: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class ParamRef(TensorRef):
    """A parameter's data; `set` assigns `.data` (the Parameter object, and so the optimizer's
    key for its state, is unchanged)."""

    __slots__ = ("param",)

    def __init__(self, name: str, param: torch.Tensor) -> None:
        super().__init__(name, PARAM)
        self.param = param

    def get(self) -> torch.Tensor:
        return self.param.data

    def set(self, value: torch.Tensor) -> None:
        self.param.data = value


class DictRef(TensorRef):
    """`mapping[key]`, e.g. one optimizer state tensor."""

    __slots__ = ("mapping", "key")

    def __init__(self, name: str, mapping: dict, key: Any, kind: str = OPTIM) -> None:
        super().__init__(name, kind)
        self.mapping = mapping
        self.key = key

    def get(self) -> torch.Tensor:
        return self.mapping[self.key]

    def set(self, value: torch.Tensor) -> None:
        self.mapping[self.key] = value


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside wrappers (accelerate's AcceleratedOptimizer keeps it in
    `.optimizer`); None when there is none yet."""
    seen = 0
    while optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer) and seen < 8:
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


def _is_adapter_param(name: str, adapter_name: str) -> bool:
    # PEFT names: "...q_proj.lora_A.<adapter>.weight", "...lora_embedding_A.<adapter>",
    # "...modules_to_save.<adapter>.weight". "run_1" must not match "run_11".
    parts = name.split(".")
    return adapter_name in parts


def run_state_refs(model: Any, adapter_name: str | None, optimizer: Any) -> list[TensorRef]:
    """Refs of one run's state: its adapter's parameters (or, without an adapter, every
    trainable parameter of its own model), its optimizer's parameters, and their optimizer
    state tensors. Parameters come first, in model order."""
    opt = unwrap_optimizer(optimizer)
    names = {id(p): name for name, p in model.named_parameters()} if model is not None else {}
    params: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()

    def add(name: str, p: torch.Tensor) -> None:
        if id(p) not in seen:
            seen.add(id(p))
            params.append((name, p))

    if model is not None:
        for name, p in model.named_parameters():
            if (adapter_name is not None and _is_adapter_param(name, adapter_name)) or (
                adapter_name is None and p.requires_grad
            ):
                add(name, p)
    if opt is not None:
        for group in opt.param_groups:
            for p in group["params"]:
                add(names.get(id(p), f"unnamed.{len(params)}"), p)

    refs: list[TensorRef] = [ParamRef(f"{PARAM}/{name}", p) for name, p in params]
    if opt is not None:
        for name, p in params:
            state = opt.state.get(p)
            if not state:
                continue
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    refs.append(DictRef(f"{OPTIM}/{name}/{key}", state, key))
    return refs


def optimizer_fingerprint(optimizer: Any) -> tuple[int | None, int]:
    """Cheap change detector: (id of the torch optimizer, number of parameters with state).

    torch optimizers create a parameter's state once (at its first step) and update it in
    place afterwards, so the refs of a run change only when this changes.
    """
    opt = unwrap_optimizer(optimizer)
    if opt is None:
        return (None, 0)
    return (id(opt), len(opt.state))
