"""Which implementation an op runs: the Triton kernels or the pure-torch reference.

``auto`` (the default) runs Triton on CUDA tensors when Triton imports, and the
reference everywhere else. ``torch`` forces the reference (the per-adapter loop
baseline in benchmarks); ``triton`` forces the kernels, which on CPU tensors needs
the Triton interpreter (``TRITON_INTERPRET=1``, set before Triton is imported) and is
how the CPU test suite runs the kernels end to end.

Set it with ``RAPIDFIRE_LORA_BACKEND=auto|torch|triton`` or ``with lora_backend("torch"):``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "torch", "triton")

try:  # Triton is Linux-only in our dependencies; everything has a torch path without it.
    import triton  # noqa: F401

    from . import _kernels as kernels

    TRITON_IMPORT_ERROR: Exception | None = None
except Exception as exc:  # noqa: BLE001 - any import failure just means "no kernels"
    kernels = None  # type: ignore[assignment]
    TRITON_IMPORT_ERROR = exc

HAS_TRITON = kernels is not None

_backend = os.environ.get("RAPIDFIRE_LORA_BACKEND", "auto")


def triton_interpreter_active() -> bool:
    """True when the kernels were built with ``TRITON_INTERPRET=1`` (they then run on CPU tensors)."""
    return HAS_TRITON and kernels.INTERPRETED


def get_lora_backend() -> str:
    return _backend


def set_lora_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"lora backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


@contextlib.contextmanager
def lora_backend(name: str) -> Iterator[None]:
    """Run the multi-LoRA ops with backend ``name`` inside the block."""
    before = _backend
    set_lora_backend(name)
    try:
        yield
    finally:
        set_lora_backend(before)


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op on tensors like ``t`` runs the Triton kernels (raises if forced but impossible)."""
    if _backend == "torch":
        return False
    if _backend == "auto":
        # fp64 stays on the reference: the kernels accumulate in fp32 and Triton's fp64 dots
        # would not match (nor compile cleanly with fp32 accumulators).
        return HAS_TRITON and t.device.type == "cuda" and t.dtype != torch.float64
    # Forced "triton": say exactly what is missing instead of failing inside a launch.
    if not HAS_TRITON:
        raise RuntimeError(
            f"lora backend 'triton' was requested but Triton did not import: {TRITON_IMPORT_ERROR}"
        )
    if t.device.type == "cpu" and not triton_interpreter_active():
        raise RuntimeError(
            "lora backend 'triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before rapidfire_core.ops is imported"
        )
    return True
