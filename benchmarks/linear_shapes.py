"""(in_features, out_features) of the linears LoRA targets in the models we measure against.

Shared by the kernel benchmarks and the sm_90 compile check, so the check compiles exactly
the launches the benchmarks time.
"""

from __future__ import annotations

LORA_LINEAR_SHAPES: dict[str, tuple[int, int]] = {
    "tinyllama-q_proj": (2048, 2048),
    "tinyllama-v_proj": (2048, 256),
    "tinyllama-up_proj": (2048, 5632),
    "tinyllama-down_proj": (5632, 2048),
    "llama3.2-1b-q_proj": (2048, 2048),
    "llama3.2-1b-v_proj": (2048, 512),
    "llama3.2-1b-up_proj": (2048, 8192),
    "llama3.2-1b-down_proj": (8192, 2048),
}
