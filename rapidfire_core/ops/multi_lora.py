"""The multi-LoRA linear as one function, its per-adapter-loop reference, and dropout masks.

Semantics of one linear layer with frozen W (and bias) shared by n adapters::

    Y = X @ W.T + b                                                  # (M, N)
    for (start, end, i) in segments:                                 # i == -1: no adapter
        if i >= 0:
            Y[start:end] += scale_i * (drop_i(X[start:end]) @ A_i.T) @ B_i.T
    # drop_i(x) = x * keep / (1 - p_i), keep drawn once per forward, reused by the backward

Gradients flow to X (through W and every adapter), A_i and B_i; never to W.

``multi_lora_add`` does the adapter part with the registered ops (their pure-torch reference
by default, the Triton kernels where enabled: see ``_backend``); ``multi_lora_linear_reference``
is the same math as a plain autograd loop over adapters: the oracle the tests compare against
PEFT, and the "per-adapter torch loop" of the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .lora_expand import lora_expand
from .lora_shrink import lora_shrink


def multi_lora_add(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scales: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slot: torch.Tensor,
    keep: torch.Tensor | None = None,
    drop_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y + per-segment scale_a * drop(x) A_a^T B_a^T`` with autograd to x, y, lora_a, lora_b.

    y (M, N) base output; x (M, K); lora_a (n, R, K), lora_b (n, N, R) zero-padded stacks;
    scales, drop_scale (n,) fp32; keep (M, K) bool. x, lora_a and lora_b share one dtype (the
    LoRA compute dtype); y may have its own, and the result is in y's dtype.
    """
    s = lora_shrink(x, lora_a, seg_starts, seg_slot, keep, drop_scale)  # (M, R)
    return lora_expand(y, s, lora_b, scales, seg_starts, seg_slot)  # (M, N)


def draw_keep_mask(
    row_p: torch.Tensor, num_cols: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bernoulli keep mask (M, num_cols) bool: entry kept with probability 1 - row_p[m].

    One draw per forward for the whole batch; rows with p = 0 are all True. The probabilities
    stay fp32 whatever the activation dtype. Drawn straight into one byte per entry: no (M, K)
    fp32 uniforms in between (4x the mask's memory, per layer and step, e.g. 1 GiB for 128k
    rows x 2048 features).
    """
    keep_p = (1.0 - row_p.float())[:, None].expand(row_p.shape[0], num_cols)  # (M, K), no copy
    mask = torch.empty((row_p.shape[0], num_cols), dtype=torch.uint8, device=row_p.device)
    return mask.bernoulli_(keep_p, generator=generator).view(torch.bool)


@dataclass
class AdapterWeights:
    """One adapter of the reference: A (r, K), B (N, r), scale, dropout p (mask given separately)."""

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scale: float
    dropout: float = 0.0


def multi_lora_add_reference(
    y: torch.Tensor,
    x: torch.Tensor,
    adapters: Sequence[AdapterWeights],
    segments: Sequence[tuple[int, int, int]],
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y`` plus each segment's adapter, as a plain autograd loop in PEFT's order of operations.

    y (M, N); x (M, K); segments [(start, end, adapter index or -1)] covering all rows in
    order, as host ints (no sync); keep (M, K) bool mask or None. Returns (M, N). Each
    adapter uses its own (unpadded) A and B, so autograd gives exactly its gradients.
    """
    # torch.split, not per-segment slicing: a slice's backward writes a zero tensor of the whole
    # input per segment; split's backward concatenates the segments' gradients once.
    sizes = [end - start for start, end, _ in segments]
    x_parts = torch.split(x, sizes)
    keep_parts = torch.split(keep, sizes) if keep is not None else [None] * len(sizes)
    deltas = []
    for (start, end, i), xs, ks in zip(segments, x_parts, keep_parts, strict=True):
        if i < 0 or end == start:
            deltas.append(y.new_zeros((end - start, y.shape[1])))
            continue
        ad = adapters[i]
        if ks is not None and ad.dropout > 0:
            xs = xs * ks / (1.0 - ad.dropout)  # torch's dropout: mask / (1 - p)
        deltas.append((xs @ ad.lora_a.T) @ ad.lora_b.T * ad.scale)
    return y + (torch.cat(deltas) if len(deltas) > 1 else deltas[0])


def multi_lora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    adapters: Sequence[AdapterWeights],
    segments: Sequence[tuple[int, int, int]],
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """The whole semantics loop (base linear included) in plain autograd; x (M, K) -> (M, N)."""
    return multi_lora_add_reference(F.linear(x, weight, bias), x, adapters, segments, keep)
