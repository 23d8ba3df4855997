"""Process-global training state that each run keeps as its own.

Runs take turns in one process, and some state that a training step reads is global to the
process. A run saves it when it gives up the turn and restores it when it gets the turn back,
so it trains exactly as it would alone:

- random number generators (Python `random`, NumPy, torch CPU and CUDA): dropout masks,
  GRPO sampling and DataLoader seeds;
- accelerate's `GradientState`, a process-wide singleton: the trainer loop sets
  `sync_gradients` for a micro-batch *before* the step-begin callback where runs pause, and
  accelerate skips `optimizer.step()` while it is False. Without this, a run with gradient
  accumulation that paused on its first micro-batch made the next run skip an update;
- accelerate's `AcceleratorState` / `PartialState` singletons, which every new trainer
  resets (TrainingArguments' device setup) and which hold the mixed-precision mode that
  autocast reads: without this, every run trained under the last-built trainer's precision;
- torch's TF32 switches, which `TrainingArguments(tf32=...)` sets for the whole process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState

# accelerate's process-wide state objects (each keeps its attributes in a class-level dict).
_SINGLETONS = (PartialState, AcceleratorState, GradientState)


@dataclass
class ProcessState:
    python_rng: Any
    numpy_rng: Any
    torch_cpu_rng: torch.Tensor
    torch_cuda_rng: list[torch.Tensor] | None
    accelerate_states: tuple[dict[str, Any], ...]  # shared dicts of _SINGLETONS, in order
    tf32: tuple[Any, Any]  # (cuda matmul, cudnn) precision settings, see _get_precision

    @classmethod
    def capture(cls) -> ProcessState:
        return cls(
            python_rng=random.getstate(),
            numpy_rng=np.random.get_state(),
            torch_cpu_rng=torch.get_rng_state(),
            torch_cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            accelerate_states=tuple(dict(cls._shared_state) for cls in _SINGLETONS),
            tf32=(_get_precision(torch.backends.cuda.matmul), _get_precision(torch.backends.cudnn)),
        )

    def restore(self) -> None:
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        torch.set_rng_state(self.torch_cpu_rng)
        if self.torch_cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda_rng)
        _set_precision(torch.backends.cuda.matmul, self.tf32[0])
        _set_precision(torch.backends.cudnn, self.tf32[1])
        for cls, saved in zip(_SINGLETONS, self.accelerate_states, strict=True):
            shared = cls._shared_state
            shared.clear()
            shared.update(saved)


def _get_precision(backend) -> tuple[str, Any]:
    # torch >= 2.9 keeps TF32 as `fp32_precision`; once that is set (transformers 5 does for
    # tf32=True), reading the legacy `allow_tf32` flag raises, so prefer the new attribute.
    if getattr(backend, "fp32_precision", None) is not None:
        return ("fp32_precision", backend.fp32_precision)
    return ("allow_tf32", backend.allow_tf32)


def _set_precision(backend, setting: tuple[str, Any]) -> None:
    name, value = setting
    if getattr(backend, name) != value:
        setattr(backend, name, value)
