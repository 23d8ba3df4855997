"""Multi-LoRA ops: Triton kernels, each beside its pure-torch reference, registered with torch.library.

- ``lora_shrink`` (``rapidfire::lora_shrink``): S = drop(X) A_i^T per segment, and its backward.
- ``lora_expand`` (``rapidfire::lora_expand``): Y + scale_i S B_i^T per segment, and its backward.
- ``multi_lora_add``: both, i.e. the adapter part of a multi-LoRA linear layer.

Every op runs its pure-torch reference by default, on any device. The Triton kernels are
opt-in until they have passed their GPU tests: ``RAPIDFIRE_LORA_BACKEND=triton`` (read at
import) or ``enable_triton_kernels()`` registers them with the dispatcher for CUDA (and CPU
under the Triton interpreter); ``with triton_kernels(False | True):`` compares both paths.
See ``_backend``.
"""

from . import _backend
from ._backend import (
    HAS_TRITON,
    enable_triton_kernels,
    triton_interpreter_active,
    triton_kernels,
    triton_kernels_enabled,
)
from .lora_expand import lora_expand, lora_expand_backward, lora_expand_reference
from .lora_shrink import lora_shrink, lora_shrink_backward, lora_shrink_reference
from .multi_lora import (
    AdapterWeights,
    draw_keep_mask,
    multi_lora_add,
    multi_lora_add_reference,
    multi_lora_linear_reference,
)
from .segments import check_segments, host_segments, segment_tensors

_backend.enable_from_environment()  # after the ops exist: RAPIDFIRE_LORA_BACKEND=triton registers them

__all__ = [
    "HAS_TRITON",
    "AdapterWeights",
    "check_segments",
    "draw_keep_mask",
    "enable_triton_kernels",
    "host_segments",
    "lora_expand",
    "lora_expand_backward",
    "lora_expand_reference",
    "lora_shrink",
    "lora_shrink_backward",
    "lora_shrink_reference",
    "multi_lora_add",
    "multi_lora_add_reference",
    "multi_lora_linear_reference",
    "segment_tensors",
    "triton_interpreter_active",
    "triton_kernels",
    "triton_kernels_enabled",
]
