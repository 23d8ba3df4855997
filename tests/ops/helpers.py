"""Shared pieces of the multi-LoRA tests: random problems, the kernel device, the tolerance rule."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, replace

import pytest
import torch

from rapidfire_core.ops import segment_tensors


def triton_kernels_on_cpu() -> None:
    """Make the Triton kernels runnable on CPU tensors (interpreter), whatever the env said at import.

    ``@triton.jit`` picks interpreter or compiler when ``_kernels`` is imported; if that
    happened without ``TRITON_INTERPRET=1``, re-import it with the variable set (the
    module object stays the same, so the registered ops see the new kernels). The
    variable is restored afterwards so nothing else in the session changes.
    """
    from rapidfire_core.ops import _backend

    if not _backend.HAS_TRITON:
        pytest.skip(f"Triton did not import: {_backend.TRITON_IMPORT_ERROR}")
    if _backend.kernels.INTERPRETED:
        return
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        importlib.reload(_backend.kernels)
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


@pytest.fixture(scope="session")
def kernel_device() -> str:
    """Where the Triton kernels run in this session: the GPU if there is one, else the interpreter on CPU."""
    if torch.cuda.is_available():
        return "cuda"
    triton_kernels_on_cpu()
    return "cpu"


@dataclass
class Problem:
    """One multi-LoRA linear's inputs: rows in segments, stacked zero-padded adapters."""

    x: torch.Tensor  # (M, K)
    y: torch.Tensor  # (M, N) base output
    lora_a: torch.Tensor  # (n, R, K), zero beyond each adapter's rank
    lora_b: torch.Tensor  # (n, N, R), zero beyond each adapter's rank
    scales: torch.Tensor  # (n,) fp32
    seg_starts: torch.Tensor  # (S+1,) int32
    seg_slot: torch.Tensor  # (S,) int32
    keep: torch.Tensor | None  # (M, K) bool
    drop_scale: torch.Tensor | None  # (n,) fp32
    grad_out: torch.Tensor  # (M, N) upstream gradient
    ranks: tuple[int, ...]

    def to(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> Problem:
        def move(t, float_too=True):
            if t is None:
                return None
            if float_too and t.is_floating_point():
                return t.to(device=device, dtype=dtype or t.dtype)
            return t.to(device=device)

        return replace(
            self,
            x=move(self.x), y=move(self.y), lora_a=move(self.lora_a), lora_b=move(self.lora_b),
            scales=move(self.scales, False), seg_starts=move(self.seg_starts), seg_slot=move(self.seg_slot),
            keep=move(self.keep), drop_scale=move(self.drop_scale, False), grad_out=move(self.grad_out),
        )  # fmt: skip


def dropout_probs(n: int, p: float) -> list[float]:
    """Mixed per-adapter dropout: p, 0, p/2, p, 0, ... (0 for all when p == 0)."""
    return [(p, 0.0, p / 2)[i % 3] for i in range(n)]


def make_problem(
    lengths: list[int],
    slots: list[int],
    ranks: list[int],
    k: int,
    n: int,
    *,
    dropout: float = 0.0,
    seed: int = 0,
) -> Problem:
    """A random fp32 problem on CPU (cast it with ``.to``); values ~N(0, 1) scaled like real layers."""
    gen = torch.Generator().manual_seed(seed)
    m = sum(lengths)
    r_max = max(ranks)
    x = torch.randn(m, k, generator=gen)
    y = torch.randn(m, n, generator=gen)
    lora_a = torch.zeros(len(ranks), r_max, k)
    lora_b = torch.zeros(len(ranks), n, r_max)
    for i, r in enumerate(ranks):
        lora_a[i, :r] = torch.randn(r, k, generator=gen) / k**0.5
        lora_b[i, :, :r] = torch.randn(n, r, generator=gen) / r**0.5
    scales = torch.tensor([2.0 / r for r in ranks]) * torch.linspace(1, 2, len(ranks))
    seg_starts, seg_slot = segment_tensors(lengths, slots)
    keep = drop_scale = None
    if dropout > 0:
        ps = dropout_probs(len(ranks), dropout)
        row_p = torch.cat(
            [
                torch.full((length,), ps[s] if s >= 0 else 0.0)
                for length, s in zip(lengths, slots, strict=True)
            ]
        )
        keep = torch.rand(m, k, generator=gen) >= row_p[:, None]
        drop_scale = torch.tensor([1.0 / (1.0 - p) for p in ps])
    grad_out = torch.randn(m, n, generator=gen)
    return Problem(
        x, y, lora_a, lora_b, scales, seg_starts, seg_slot, keep, drop_scale, grad_out, tuple(ranks)
    )


def ulp_floor(dtype: torch.dtype, truth: torch.Tensor) -> float:
    """A few units in the last place of the largest value: the slack when torch's own error is ~0."""
    return 4 * torch.finfo(dtype).eps * (truth.abs().max().item() + 1e-30)


def assert_within_torch_error(
    name: str, got: torch.Tensor, same_precision: torch.Tensor, truth: torch.Tensor
) -> None:
    """flash-attention's rule: |got - truth| <= 2 |torch same precision - truth| (+ a few ulps)."""
    truth = truth.double().cpu()
    err = (got.double().cpu() - truth).abs().max().item()
    err_torch = (same_precision.double().cpu() - truth).abs().max().item()
    floor = ulp_floor(got.dtype, truth)
    assert err <= 2 * err_torch + floor, (
        f"{name}: max error {err:.3g} vs truth > 2 x torch's {err_torch:.3g} + {floor:.2g} ({got.dtype})"
    )
