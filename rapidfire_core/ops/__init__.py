"""Multi-LoRA ops: Triton kernels, each beside its pure-torch reference, registered with torch.library.

- ``lora_shrink`` (``rapidfire::lora_shrink``): S = drop(X) A_i^T per segment, and its backward.
- ``lora_expand`` (``rapidfire::lora_expand``): Y + scale_i S B_i^T per segment, and its backward.
- ``multi_lora_add``: both, i.e. the adapter part of a multi-LoRA linear layer.

CUDA tensors run the Triton kernels when Triton imports; CPU tensors run the reference.
``lora_backend("torch" | "triton" | "auto")`` overrides the choice (see ``_backend``).
"""

from ._backend import HAS_TRITON, get_lora_backend, lora_backend, set_lora_backend, triton_interpreter_active
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

__all__ = [
    "HAS_TRITON",
    "AdapterWeights",
    "check_segments",
    "draw_keep_mask",
    "get_lora_backend",
    "host_segments",
    "lora_backend",
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
    "set_lora_backend",
    "triton_interpreter_active",
]
