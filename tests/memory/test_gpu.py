"""GPU path of the pool: pinned arena, async H2D/D2H ordered by events, copy/compute overlap,
exact round trips with CUDA tensors. Marked `gpu`: skipped (with the reason) without one."""

from __future__ import annotations

import copy
import io
import time

import pytest
import torch

from rapidfire_core import _native
from rapidfire_core.memory import StatePool, run_state_refs

C = _native.load_native()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(C is None, reason=f"rapidfire_core._C is not built: {_native.native_error()}"),
]


@pytest.fixture(scope="module")
def cuda_compiled():
    if not C.CUDA_COMPILED:
        pytest.skip("rapidfire_core._C was built without CUDA")
    info = C.build_info()
    if not info["gpu_usable"]:  # e.g. its CUDA runtime is newer than the driver
        pytest.skip(f"rapidfire_core._C cannot use the GPU: {info['gpu_error']}")


def test_pinned_arena(cuda_compiled):
    arena = C.HostArena(64 << 20, pin="pinned")
    assert arena.pinned and arena.pin_error is None
    assert torch.frombuffer(arena, dtype=torch.uint8).is_pinned()
    assert C.HostArena(1 << 20).pinned  # auto pins when a GPU is usable


def test_async_d2h_h2d_with_events(cuda_compiled):
    arena = C.HostArena(256 << 20, pin="pinned")
    engine = C.CopyEngine(arena)
    host = torch.frombuffer(arena, dtype=torch.uint8)
    side = torch.cuda.Stream()
    n = 128 << 20
    src = torch.randint(0, 256, (n,), dtype=torch.uint8, device="cuda")
    slot = arena.allocate(n)
    side.wait_stream(torch.cuda.current_stream())
    down = engine.d2h([(slot, src.data_ptr(), n)], device=src.device.index, stream=side.cuda_stream)
    assert down.is_cuda and down.handle != 0 and down.device == src.device.index
    down.synchronize()
    assert down.query()
    assert torch.equal(host[slot : slot + n], src.cpu())

    dst = torch.empty_like(src)
    side.wait_stream(torch.cuda.current_stream())
    up = engine.h2d([(slot, dst.data_ptr(), n)], device=dst.device.index, stream=side.cuda_stream)
    dst.record_stream(side)
    up.stream_wait(torch.cuda.current_stream().cuda_stream)  # no host wait: the stream waits
    checksum = (dst.to(torch.int64).sum() == src.to(torch.int64).sum()).item()  # on the current stream
    assert checksum and torch.equal(dst, src)


def _timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def test_copy_overlaps_compute(cuda_compiled):
    arena = C.HostArena(1 << 30, pin="pinned")
    engine = C.CopyEngine(arena)
    side = torch.cuda.Stream()
    n = 1 << 30
    slot = arena.allocate(n)
    dst = torch.empty(n, dtype=torch.uint8, device="cuda")
    a = torch.randn(4096, 4096, device="cuda")

    def copy_once():
        engine.h2d([(slot, dst.data_ptr(), n)], device=dst.device.index, stream=side.cuda_stream)

    def compute(iters):
        for _ in range(iters):
            a @ a

    t_copy = min(_timed(copy_once) for _ in range(3))
    compute(3)  # cuBLAS initialisation and autotuning outside the timings
    torch.cuda.synchronize()
    t_one = min(_timed(lambda: compute(10)) for _ in range(2)) / 10
    iters = max(10, int(1.5 * t_copy / t_one))
    t_compute = min(_timed(lambda: compute(iters)) for _ in range(2))

    def both():
        copy_once()
        compute(iters)

    t_both = min(_timed(both) for _ in range(3))
    hidden = (t_copy + t_compute - t_both) / t_copy
    assert hidden > 0.7, (
        f"copy {t_copy * 1e3:.1f} ms, compute {t_compute * 1e3:.1f} ms, both {t_both * 1e3:.1f} ms"
    )


def _lora_model(model_dir: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir).cuda()
    config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "v_proj", "down_proj"]
    )
    return get_peft_model(base, config, adapter_name="run_1")


@pytest.mark.parametrize("fused", [True, False])  # fused: device step tensors; foreach: CPU steps
def test_training_evicted_every_step_is_exact_on_cuda(cuda_compiled, tiny_model_dir, fused):
    model = _lora_model(tiny_model_dir)
    twin = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    twin_params = [p for p in twin.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, fused=fused)
    twin_opt = torch.optim.AdamW(twin_params, lr=2e-3, fused=fused)
    pool = StatePool("cuda", 64 << 20)
    assert pool.arena.pinned

    def step(m, o, seed):
        torch.manual_seed(seed)
        ids = torch.randint(3, 100, (2, 12), device="cuda")
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        o.step()
        o.zero_grad(set_to_none=True)
        return loss.detach()

    pool.put("run", run_state_refs(model, "run_1", opt))
    losses, twin_losses = [], []
    for s in range(6):
        pool.acquire("run")
        losses.append(step(model, opt, s))
        twin_losses.append(step(twin, twin_opt, s))
        layout = pool.put("run", run_state_refs(model, "run_1", opt))
        before = torch.cuda.memory_allocated()
        pool.evict("run")
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() <= before - layout.device_bytes  # device memory released
        if s % 2:
            pool.prefetch("run")
    pool.acquire("run")
    sections = {e.section for e in pool.layout("run").entries if e.name.endswith("/step")}
    assert sections == ({"device"} if fused else {"host"})
    # A checkpoint of the optimizer writes the run's own state, never the whole (64 MiB) arena.
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)
    assert saved.tell() < 2 * pool.layout("run").total_bytes + (1 << 20)
    assert torch.equal(torch.stack(losses), torch.stack(twin_losses))
    for p, q in zip(params, twin_params, strict=True):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, twin_opt.state[q][key]), key
    pool.close()


def test_prefetch_runs_on_the_side_stream_without_host_sync(cuda_compiled):
    pool = StatePool("cuda", 512 << 20)
    w = torch.nn.Parameter(torch.randn(64 << 20, device="cuda"))  # 256 MiB
    from rapidfire_core.memory.state_refs import ParamRef

    expected = w.detach().clone()
    pool.put("run", [ParamRef("w", w)])
    pool.evict("run")
    a = torch.randn(4096, 4096, device="cuda")
    for _ in range(50):  # keep the compute stream busy
        a = a @ a / 4096
    start = time.perf_counter()
    pool.prefetch("run")
    pool.acquire("run")
    issued = time.perf_counter() - start
    assert torch.equal(w, expected)  # ordered by the stream wait, not by the host
    assert issued < 0.05, f"prefetch + acquire blocked the host for {issued * 1e3:.1f} ms"
    pool.close()


def _busy(iters: int = 30) -> None:
    """Queue ~tens of ms of compute on the current stream, so copies ordered after it wait."""
    a = torch.randn(4096, 4096, device="cuda")
    for _ in range(iters):
        a = a @ a / 4096


def test_swaps_behind_busy_compute_without_host_syncs_are_exact(cuda_compiled):
    """Evict, restore, prefetch-then-evict and snapshots back to back while the compute stream is
    busy: every ordering comes from stream waits (two side streams), none from the host."""
    from rapidfire_core.memory.state_refs import ParamRef

    pool = StatePool("cuda", 512 << 20)
    w = torch.nn.Parameter(torch.randn(16 << 20, device="cuda"))  # 64 MiB
    expected = w.detach().clone()
    pool.put("run", [ParamRef("w", w)])
    for step in range(4):
        _busy()
        pool.evict("run")
        pool.prefetch("run")
        pool.evict("run")  # never acquired: the D2H must follow the H2D
        pool.acquire("run")
        with torch.no_grad():
            w.add_(1.0)  # compute on the restored state
        expected += 1.0
        pool.snapshot("run", f"warm{step}")
        with torch.no_grad():
            w.mul_(2.0)  # the next step writes the buffer the snapshot is reading
        torch.testing.assert_close(pool.materialize(f"warm{step}")["w"], expected, rtol=0, atol=0)
        expected *= 2.0
        _busy()
    pool.load("warm0", "run")  # a warm start into a resident run
    torch.testing.assert_close(w.detach(), pool.materialize("warm0")["w"], rtol=0, atol=0)
    pool.close()
