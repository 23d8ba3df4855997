"""Which implementation the multi-LoRA ops run: the pure-torch reference, or the Triton kernels (opt-in).

Every op (``rapidfire::lora_shrink``, ``lora_expand`` and their backwards) is a ``torch.library``
custom op whose default implementation is its pure-torch reference: correct on any device. The
Triton kernels are registered with the dispatcher, one kernel per device type, only on request:

- ``RAPIDFIRE_LORA_BACKEND=triton`` in the environment when ``rapidfire_core.ops`` is imported
  (``torch``, the default, registers nothing), or
- ``enable_triton_kernels()`` (idempotent).

They register for ``"cuda"``, and for ``"cpu"`` too when the Triton interpreter is active
(``TRITON_INTERPRET=1``: how the CPU test suite runs the kernels). Opt-in because the kernels have
not yet passed their gpu-marked tests and the fused-vs-sliced fidelity check on a real GPU: until
they have, nobody gets an unverified kernel by default. Asking for them where Triton cannot import
raises, naming the import error.

``with triton_kernels(False):`` runs the reference inside the block even where the kernels are
registered; ``with triton_kernels():`` runs the kernels (registering them first if needed). Both
restore the previous state afterwards: how tests and benchmarks compare the two paths. Switching
off is torch's own ``CustomOpDef.set_kernel_enabled``: the registered kernel stays and the
dispatcher falls back to the default (reference) implementation. The state is process-wide.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

BACKEND_ENV = "RAPIDFIRE_LORA_BACKEND"
BACKENDS = ("torch", "triton")

# What the kernels compute in (fp32 accumulation); other dtypes (fp64) run the reference even on
# a device with kernels: Triton's fp64 dots would neither match nor compile with fp32 accumulators.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

try:  # Triton is Linux-only in our dependencies; everything has a torch path without it.
    import triton  # noqa: F401

    from . import _kernels as kernels

    TRITON_IMPORT_ERROR: Exception | None = None
except Exception as exc:  # noqa: BLE001 - any import failure just means "no kernels"
    kernels = None  # type: ignore[assignment]
    TRITON_IMPORT_ERROR = exc

HAS_TRITON = kernels is not None

_registered: set[str] = set()  # device types whose Triton kernels are registered with every op
_switched_off: dict[str, contextlib.ExitStack] = {}  # registered, but set_kernel_enabled(False) held


def triton_interpreter_active() -> bool:
    """True when the kernels were built with ``TRITON_INTERPRET=1`` (they then run on CPU tensors)."""
    return HAS_TRITON and kernels.INTERPRETED


def _triton_implementations() -> list[tuple[object, object]]:
    """(op, its Triton implementation) for every op; imported here, not at the top: the op
    modules import this one."""
    from .lora_expand import TRITON_IMPLEMENTATIONS as expand
    from .lora_shrink import TRITON_IMPLEMENTATIONS as shrink

    return [*shrink, *expand]


def _switch(device_type: str, on: bool) -> None:
    if on and device_type in _switched_off:
        _switched_off.pop(device_type).close()
    elif not on and device_type in _registered and device_type not in _switched_off:
        stack = contextlib.ExitStack()
        for op, _ in _triton_implementations():
            stack.enter_context(op.set_kernel_enabled(device_type, False))
        _switched_off[device_type] = stack


def enable_triton_kernels() -> tuple[str, ...]:
    """Register the Triton kernels with every op for "cuda" (and "cpu" under the interpreter) and
    switch them on; idempotent. Returns those device types. Raises if Triton did not import."""
    if not HAS_TRITON:
        raise RuntimeError(
            f"the Triton multi-LoRA kernels were requested but Triton did not import: {TRITON_IMPORT_ERROR!r}"
        )
    devices = ("cuda", "cpu") if triton_interpreter_active() else ("cuda",)
    for device_type in devices:
        if device_type not in _registered:
            for op, implementation in _triton_implementations():
                op.register_kernel(device_type, implementation)
            _registered.add(device_type)
        _switch(device_type, True)
    return devices


def triton_kernels_enabled(t: torch.Tensor) -> bool:
    """Whether the ops run the Triton kernels on tensors like ``t`` (its device type has them
    registered and switched on, and its dtype is one they compute in)."""
    device_type = t.device.type
    return device_type in _registered and device_type not in _switched_off and t.dtype in KERNEL_DTYPES


@contextlib.contextmanager
def triton_kernels(enabled: bool = True) -> Iterator[None]:
    """Inside the block the ops run the Triton kernels (``enabled``; registered if needed, raises
    without Triton) or the reference on every device; the previous state is restored after."""
    before = {device_type: device_type not in _switched_off for device_type in _registered}
    if enabled:
        enable_triton_kernels()
    else:
        for device_type in _registered:
            _switch(device_type, False)
    try:
        yield
    finally:
        for device_type in tuple(_registered):  # kernels registered inside the block end switched off
            _switch(device_type, before.get(device_type, False))


def enable_from_environment() -> None:
    """Apply ``RAPIDFIRE_LORA_BACKEND`` (read once, when ``rapidfire_core.ops`` is imported)."""
    name = os.environ.get(BACKEND_ENV, "torch")
    if name not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {BACKENDS}, got {name!r}")
    if name == "triton":
        enable_triton_kernels()
