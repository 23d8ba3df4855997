"""The kernels for real on a GPU (skipped without one): Llama-sized shapes, bf16, determinism, no host sync.

The parametrised kernel tests (test_kernels.py) also run compiled on CUDA when a GPU is
present, bf16 included; these add what only real hardware can show.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rapidfire_core.lora import LoraBatch, MultiLoraLinear, lora_batch
from rapidfire_core.ops import triton_kernels
from tests.ops.helpers import assert_within_torch_error, make_problem
from tests.ops.test_kernels import GRADS, forward_backward

pytestmark = pytest.mark.gpu

# q_proj of Llama-3.2-1B: 4 runs x 256 tokens + 64 rows of no adapter, mixed ranks, dropout on.
LLAMA = ([256, 256, 64, 256, 256], [0, 1, -1, 2, 3], [8, 16, 16, 64], 2048, 2048)


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"]
)
def test_llama_shape_within_twice_torch_error(dtype):
    lengths, slots, ranks, k, n = LLAMA
    base = make_problem(lengths, slots, ranks, k, n, dropout=0.1, seed=0)
    truth = forward_backward(base.to(dtype).to(torch.float64, "cuda"), "torch")
    same_precision = forward_backward(base.to(dtype, "cuda"), "torch")
    got = forward_backward(base.to(dtype, "cuda"), "triton")
    for name in GRADS:
        assert_within_torch_error(name, got[name], same_precision[name], truth[name])


def test_backward_bit_identical_with_row_splits():
    """One adapter, many rows: dA/dB reduce over row splits (fp32 partials); still the same bits."""
    from rapidfire_core.ops import _backend

    p = make_problem([4096], [0], [16], 2048, 2048, dropout=0.1, seed=1).to(torch.bfloat16, "cuda")
    assert _backend.kernels.wgrad_split(4096, 1, 32, 64, p.x) > 1  # the split path is the one under test
    runs = [forward_backward(p, "triton") for _ in range(3)]
    for name in GRADS:
        assert all(torch.equal(runs[0][name], r[name]) for r in runs[1:]), name


def _layer(dtype=torch.bfloat16) -> MultiLoraLinear:
    torch.manual_seed(0)
    layer = MultiLoraLinear(nn.Linear(1024, 512, device="cuda", dtype=dtype))
    for i, r in enumerate((8, 16, 64)):
        layer.add_adapter(f"run{i}", r=r, lora_alpha=16, lora_dropout=0.1 * i)
    with torch.no_grad():
        for p in layer.lora_B.parameters():
            p.normal_()
    return layer


@pytest.mark.parametrize("kernels", [False, True], ids=["torch-path", "triton"])
def test_layer_step_makes_no_host_sync(kernels):
    """Neither the default path (the per-adapter loop) nor the kernels wait for the GPU."""
    layer = _layer().train()
    batch = LoraBatch(
        [("run0", 512), (None, 64), ("run1", 512), ("run2", 256)], "cuda", adapter_sets=[layer.adapter_names]
    )
    x = torch.randn(1344, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def step():
        with triton_kernels(kernels), lora_batch(batch):
            out = layer(x)
            out.float().square().mean().backward()

    step()  # first call fills the batch's small caches (pinned, non-blocking copies)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_layer_triton_equals_torch_path_under_autocast():
    """bf16 base, fp32 adapters (PEFT's default), bf16 autocast, training mode (dropout on, the
    same masks on both paths): the kernels run in bf16 and agree with the per-adapter loop on
    the output and every gradient. The upstream gradient is O(1), so each adapter's share of
    dX, dA and dB is far above the tolerance."""
    results = []
    for backend in ("torch", "triton"):
        layer = _layer().train()
        gen = torch.Generator("cuda").manual_seed(3)
        batch = LoraBatch(
            [("run0", 300), ("run1", 200), (None, 12), ("run2", 100)], "cuda",
            generator=torch.Generator("cuda").manual_seed(5),
        )  # fmt: skip
        x = torch.randn(612, 1024, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
        upstream = torch.randn(612, 512, device="cuda", generator=gen)
        with triton_kernels(backend == "triton"), lora_batch(batch), torch.autocast("cuda", torch.bfloat16):
            out = layer(x)
        (out.float() * upstream).sum().backward()
        grads = [p.grad.float() for p in (*layer.lora_A.parameters(), *layer.lora_B.parameters())]
        results.append((out.float(), x.grad.float(), grads))
    (out_t, dx_t, grads_t), (out_k, dx_k, grads_k) = results

    def close(got, want, what):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2 * scale, msg=lambda m: f"{what}: {m}")

    close(out_k, out_t, "out")
    close(dx_k, dx_t, "dx")
    for i, (a, b) in enumerate(zip(grads_k, grads_t, strict=True)):
        assert b.abs().max() > 0, f"gradient {i} is zero: the test would prove nothing"
        close(a, b, f"adapter gradient {i}")


@pytest.mark.parametrize("kernels", [False, True], ids=["torch-path", "triton"])
def test_compiled_layer_on_gpu_equals_eager(kernels):
    torch._dynamo.reset()
    layer = _layer().eval()
    batch = LoraBatch([("run0", 128), ("run2", 64)], "cuda", adapter_sets=[layer.adapter_names])
    x = torch.randn(192, 1024, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(layer, fullgraph=True)
    with triton_kernels(kernels), lora_batch(batch):
        eager = layer(x)
        comp = compiled(x)
    torch.testing.assert_close(comp, eager, rtol=1e-2, atol=1e-2)


def test_fused_tiny_llama_on_gpu_equals_peft():
    from rapidfire_core.demo.tiny_model import build_tiny_llama
    from tests.lora.test_inject import fused_vs_alone

    model, _ = build_tiny_llama(seed=0)
    fused_vs_alone(model.eval(), "triton", "cuda")
