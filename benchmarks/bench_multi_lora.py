"""Multi-LoRA linear layer, forward + backward: fused Triton kernels vs the alternatives.

    pytest -m bench benchmarks/bench_multi_lora.py --benchmark-only [--benchmark-group-by=group]

One benchmark group per (linear shape, N adapters, rank r, tokens per adapter); in each:

- ``triton``     MultiLoraLinear on the Triton kernels (GPU only; opted in with ``triton_kernels()``);
- ``torch_loop`` the per-adapter loop in plain torch autograd (``multi_lora_linear_reference``);
- ``layer_cpu``  MultiLoraLinear on CPU, kernels off (its per-adapter torch path; CPU only);
- ``peft``       N separate PEFT LoRA layers, each on its own rows, one after another;
- ``base``       the frozen base linear alone (forward + dX): the floor.

Every case computes the gradients a training step needs: dX and each adapter's dA, dB
(never dW). GPU: bf16 activations and adapters, shapes of TinyLlama-1.1B and
Llama-3.2-1B, N in {1, 4, 8}, r in {8, 16, 64}, 512 and 2048 tokens per adapter.
Goal: ``triton`` within 1.10x of ``base`` at r=16, N=8 (ratios land in extra_info).
Wall-clock times include host launch overhead (what an eager training step pays); on a GPU each
case is also captured as a CUDA graph and replayed (extra_info ``graphed_s``,
``x_base_graphed``): the kernels' own time, the figure the goal is about.
CPU: small shapes of the torch paths only (the Triton rows are skipped, with the reason).
"""

from __future__ import annotations

import copy
import itertools
import statistics

import pytest
import torch
from torch import nn

from benchmarks.linear_shapes import LORA_LINEAR_SHAPES
from benchmarks.settings import bench_rounds
from rapidfire_core.lora import LoraBatch, MultiLoraLinear, lora_batch
from rapidfire_core.ops import AdapterWeights, multi_lora_linear_reference, triton_kernels

pytestmark = pytest.mark.bench

HAS_GPU = torch.cuda.is_available()

GPU_SHAPES = LORA_LINEAR_SHAPES
CPU_SHAPES = {"cpu-small": (256, 256)}

if HAS_GPU:
    SHAPES, ADAPTERS, RANKS, TOKENS = GPU_SHAPES, (1, 4, 8), (8, 16, 64), (512, 2048)
    DEVICE, DTYPE = "cuda", torch.bfloat16
else:
    SHAPES, ADAPTERS, RANKS, TOKENS = CPU_SHAPES, (1, 4), (8, 16), (64,)
    DEVICE, DTYPE = "cpu", torch.float32

# "base" first: each group's later rows report their time as a multiple of it (extra_info["x_base"]).
IMPLS = ("base", "triton", "torch_loop", "layer_cpu", "peft")
CASES = [(*case, impl) for case in itertools.product(SHAPES, ADAPTERS, RANKS, TOKENS) for impl in IMPLS]
_BASE_TIMES: dict[tuple, float] = {}  # (shape, N, r, tokens) -> base median seconds
_BASE_GRAPHED: dict[tuple, float | None] = {}  # the same, replayed as a CUDA graph (GPU)


def _sync() -> None:
    if HAS_GPU:
        torch.cuda.synchronize()


class Case:
    """Inputs shared by every implementation of one group: same base, adapters, x, upstream grad."""

    def __init__(self, shape: str, n_adapters: int, rank: int, tokens: int) -> None:
        k, n = SHAPES[shape]
        gen = torch.Generator(DEVICE).manual_seed(0)
        self.rows = n_adapters * tokens
        self.tokens = tokens
        self.base = nn.Linear(k, n, bias=False, device=DEVICE, dtype=DTYPE).requires_grad_(False)
        self.layer = MultiLoraLinear(self.base)
        for i in range(n_adapters):
            self.layer.add_adapter(f"run{i}", r=rank, lora_alpha=2 * rank, autocast_adapter_dtype=False)
        with torch.no_grad():
            for p in self.layer.lora_B.parameters():
                p.normal_(generator=gen)
        self.names = self.layer.adapter_names
        self.batch = LoraBatch([(name, tokens) for name in self.names], DEVICE, adapter_sets=[self.names])
        self.x = torch.randn(self.rows, k, device=DEVICE, dtype=DTYPE, generator=gen).requires_grad_()
        self.grad = torch.randn(self.rows, n, device=DEVICE, dtype=DTYPE, generator=gen)
        self.params = [*self.layer.lora_A.parameters(), *self.layer.lora_B.parameters()]

    def layer_step(self) -> None:
        with lora_batch(self.batch):
            out = self.layer(self.x)
        torch.autograd.grad(out, [self.x, *self.params], self.grad)

    def torch_loop_step(self) -> None:
        adapters = [
            AdapterWeights(
                self.layer.lora_A[n].weight, self.layer.lora_B[n].weight, self.layer.specs[n].scaling
            )
            for n in self.names
        ]
        segments = [(i * self.tokens, (i + 1) * self.tokens, i) for i in range(len(self.names))]
        out = multi_lora_linear_reference(self.x, self.base.weight, None, adapters, segments)
        torch.autograd.grad(out, [self.x, *self.params], self.grad)

    def base_step(self) -> None:
        out = self.base(self.x)
        torch.autograd.grad(out, [self.x], self.grad)

    def peft_layers(self) -> list[nn.Module]:
        from peft import LoraConfig, get_peft_model

        class Holder(nn.Module):
            def __init__(self, lin):
                super().__init__()
                self.lin = lin

        layers = []
        for name in self.names:
            spec = self.layer.specs[name]
            config = LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, target_modules=["lin"])
            model = get_peft_model(Holder(copy.copy(self.base)), config, autocast_adapter_dtype=False)
            lin = model.base_model.model.lin
            with torch.no_grad():
                lin.lora_A["default"].weight.copy_(self.layer.lora_A[name].weight)
                lin.lora_B["default"].weight.copy_(self.layer.lora_B[name].weight)
            layers.append(lin)
        return layers

    def peft_step(self, layers: list[nn.Module]) -> None:
        xs = self.x.split(self.tokens)
        outs = [layer(x) for layer, x in zip(layers, xs, strict=True)]
        params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
        torch.autograd.grad(outs, [self.x, *params], list(self.grad.split(self.tokens)))


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """CPU: one intra-op thread. These matmuls are tiny; on a shared 2-core box a second thread's
    spin-waits made timings swing 10-100x between rounds (see demo.tiny_model.single_thread)."""
    if HAS_GPU:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _graphed_seconds(fn, reps: int = 20) -> float | None:
    """GPU: median device time of fn() captured once as a CUDA graph and replayed, i.e. the
    kernels' own time without host launch overhead (the wall-clock figure includes it). None
    when fn cannot be captured (e.g. a host sync inside it)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the default stream, as capture requires
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    except Exception:  # noqa: BLE001 - a figure we cannot take, not a failure of the case
        torch.cuda.synchronize()
        return None


def _time(benchmark, fn) -> float:
    def step():
        fn()
        _sync()

    for _ in range(2):  # warm up: Triton JIT, cuBLAS heuristics, allocator
        step()
    benchmark.pedantic(step, rounds=bench_rounds(20), iterations=1, warmup_rounds=1)
    return benchmark.stats.stats.median


@pytest.mark.parametrize(
    "shape,n_adapters,rank,tokens,impl", CASES, ids=[f"{s}-N{n}-r{r}-t{t}-{i}" for s, n, r, t, i in CASES]
)
def test_multi_lora_layer_fwd_bwd(benchmark, shape, n_adapters, rank, tokens, impl):
    if impl == "triton" and not HAS_GPU:
        pytest.skip("Triton timing needs a CUDA GPU (the interpreter on CPU measures numpy, not the kernel)")
    if impl == "layer_cpu" and HAS_GPU:
        pytest.skip("CPU reference path: timed on CPU-only machines")
    group = f"{shape}-N{n_adapters}-r{rank}-t{tokens}"
    benchmark.group = group
    case = Case(shape, n_adapters, rank, tokens)
    if impl in ("triton", "layer_cpu"):
        with triton_kernels(impl == "triton"):
            seconds = _time(benchmark, case.layer_step)
    elif impl == "torch_loop":
        seconds = _time(benchmark, case.torch_loop_step)
    elif impl == "peft":
        layers = case.peft_layers()
        seconds = _time(benchmark, lambda: case.peft_step(layers))
    else:
        seconds = _time(benchmark, case.base_step)
    key = (shape, n_adapters, rank, tokens)
    if HAS_GPU:
        fn = {
            "triton": case.layer_step, "torch_loop": case.torch_loop_step, "base": case.base_step,
            "peft": (lambda: case.peft_step(layers)) if impl == "peft" else None,
        }[impl]  # fmt: skip
        with triton_kernels(impl == "triton"):
            graphed = _graphed_seconds(fn)
        benchmark.extra_info["graphed_s"] = graphed
        if impl == "base":
            _BASE_GRAPHED[key] = graphed
        elif graphed and _BASE_GRAPHED.get(key):
            benchmark.extra_info["x_base_graphed"] = graphed / _BASE_GRAPHED[key]
    if impl == "base":
        _BASE_TIMES[key] = seconds
    benchmark.extra_info.update(
        impl=impl, rows=case.rows, device=torch.cuda.get_device_name() if HAS_GPU else "cpu", dtype=str(DTYPE),
        tokens_per_s=case.rows / seconds,
    )  # fmt: skip
    if key in _BASE_TIMES and impl != "base":
        benchmark.extra_info["x_base"] = seconds / _BASE_TIMES[key]
