"""Run-state swap: the pinned pool (one batched async copy) vs RapidFire-style per-tensor copies.

The state is one run of TinyLlama-1.1B shapes (22 layers, hidden 2048, k/v projections
2048 -> 256, intermediate 5632) with LoRA on all seven linear projections of every layer
(q, k, v, o, gate, up, down) and AdamW state, all float32 (PEFT keeps adapters in fp32):

    per layer: A (r, in) + B (out, r) for 7 projections = 35,840 * r weights
    r=16: 12.6 M weights = 50.5 MB; with exp_avg + exp_avg_sq + 308 step scalars: 151 MB
    r=64: 50.5 M weights = 202 MB; with the moments: 606 MB

Both directions are timed, on the CPU (device == host: H2H through the arena) and, when one is
usable, on the GPU:

    pool        evict = one D2H into the arena slot; restore = one H2D into a new flat buffer
    per_tensor  `t.to(other, copy=True)` per tensor into pageable memory, blocking (what
                RapidFire-style code does at each chunk boundary)

GB/s counts the state's bytes (not the pool's 512-byte alignment padding). On a GPU it also
reports the link's pinned bandwidth (one large cudaMemcpyAsync through torch), the fraction of
it the pool reaches, how much of a prefetch stays hidden behind compute, and how much faster a
turn change's eviction + restore go issued together (separate D2H and H2D streams) than one
after the other.

    make bench                                   # pytest-benchmark, marker `bench`
    python benchmarks/bench_state_swap.py        # the same figures as a table
"""

from __future__ import annotations

import time
from functools import partial

import pytest
import torch

from benchmarks.settings import bench_rounds
from rapidfire_core.memory import StatePool
from rapidfire_core.memory.state_refs import DictRef, ParamRef

pytestmark = pytest.mark.bench

LAYERS, HIDDEN, KV, INTERMEDIATE = 22, 2048, 256, 5632
PROJECTIONS = {  # name: (in_features, out_features)
    "q_proj": (HIDDEN, HIDDEN),
    "k_proj": (HIDDEN, KV),
    "v_proj": (HIDDEN, KV),
    "o_proj": (HIDDEN, HIDDEN),
    "gate_proj": (HIDDEN, INTERMEDIATE),
    "up_proj": (HIDDEN, INTERMEDIATE),
    "down_proj": (INTERMEDIATE, HIDDEN),
}
RANKS = (16, 64)


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class RunState:
    """One run's LoRA weights + AdamW state on `device`, registered in a pool."""

    def __init__(self, rank: int, device: str) -> None:
        self.device = device
        g = torch.Generator().manual_seed(rank)
        self.refs = []
        self.tensors: list[torch.Tensor] = []
        for layer in range(LAYERS):
            for proj, (fan_in, fan_out) in PROJECTIONS.items():
                for part, shape in (("lora_A", (rank, fan_in)), ("lora_B", (fan_out, rank))):
                    name = f"layers.{layer}.{proj}.{part}.weight"
                    weight = torch.nn.Parameter(torch.randn(shape, generator=g).to(device))
                    state = {
                        "step": torch.tensor(7.0, device=device),  # fused AdamW keeps it on the device
                        "exp_avg": torch.randn(shape, generator=g).to(device),
                        "exp_avg_sq": torch.rand(shape, generator=g).to(device),
                    }
                    self.refs.append(ParamRef(f"param/{name}", weight))
                    self.refs += [DictRef(f"optim/{name}/{k}", state, k) for k in state]
        self.tensors = [ref.get() for ref in self.refs]
        self.nbytes = sum(t.nbytes for t in self.tensors)
        # Room for the run's slot and a second slot of the same size for `copy_only`.
        self.pool = StatePool(device, int(self.nbytes * 2.2) + (64 << 20))
        self.pool.put("run", self.refs)
        n = self.pool.device_bytes("run")
        self.spare_slot = self.pool.arena.allocate(n)
        self.warm = torch.ones(n, dtype=torch.uint8, device=device)  # memory already faulted in

    def live(self) -> list[torch.Tensor]:
        return [ref.get() for ref in self.refs]

    # ---- the pool -------------------------------------------------------------------------------
    def pool_evict(self) -> None:
        self.pool.evict("run")
        self.pool.synchronize()

    def pool_restore(self) -> None:
        self.pool.acquire("run")
        sync(self.device)

    def copy_only(self, direction: str) -> None:
        """The pool's copy path alone: one batched engine call into already-touched memory."""
        ranges = [(self.spare_slot, self.warm.data_ptr(), self.warm.numel())]
        lane = self.pool.lane
        event = lane.to_device(ranges) if direction == "to_device" else lane.to_host(ranges)
        event.synchronize()

    def ensure_resident(self) -> None:
        self.pool_restore()

    def ensure_evicted(self) -> None:
        self.pool_evict()


class PerTensor:
    """RapidFire-style: every tensor copied on its own, pageable host memory, blocking."""

    def __init__(self, state: RunState) -> None:
        self.device = state.device
        self.on_device = [t.clone() for t in state.live()]
        self.on_host = [t.to("cpu", copy=True) for t in self.on_device]

    def to_host(self) -> None:
        self.on_host = [t.to("cpu", copy=True) for t in self.on_device]

    def to_device(self) -> None:
        self.on_device = [t.to(self.device, copy=True) for t in self.on_host]
        sync(self.device)


def timed(fn, setup=None, repeat: int = 5) -> float:
    """Best of `repeat` wall times of fn() (seconds), each after an untimed setup()."""
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def pinned_link_gbps(nbytes: int = 512 << 20) -> dict[str, float]:
    """The link's pinned bandwidth: one large async copy each way, timed with CUDA events."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    out = {}
    for name, dst, src in (("h2d", dev, host), ("d2h", host, dev)):
        best = float("inf")
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src, non_blocking=True)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        out[name] = nbytes / best / 1e9
    return out


def hidden_fraction(state: RunState) -> float:
    """Share of a prefetch's copy time that overlaps compute queued after it (1.0 = all hidden)."""
    a = torch.randn(4096, 4096, device="cuda")

    def compute(iters: int) -> None:
        for _ in range(iters):
            a @ a

    t_one = timed(lambda: (compute(5), sync("cuda")), repeat=3) / 5
    state.ensure_evicted()
    t_copy = timed(state.pool_restore, setup=state.ensure_evicted)
    iters = max(5, int(2 * t_copy / t_one))
    t_compute = timed(lambda: (compute(iters), sync("cuda")), repeat=3)

    def both() -> None:
        state.pool.prefetch("run")
        compute(iters)
        state.pool.acquire("run")
        sync("cuda")

    t_both = timed(both, setup=state.ensure_evicted, repeat=3)
    return max(0.0, min(1.0, (t_copy + t_compute - t_both) / t_copy))


def duplex_speedup(state: RunState, other: RunState) -> float:
    """A turn change moves two runs: `other` out, `state` in. The pool puts evictions and
    restores on separate streams, so both directions share the link at once. Returns
    (evict alone + restore alone) / (both issued together): 2.0 = fully overlapped, 1.0 = serial."""

    def setup() -> None:
        other.ensure_resident()
        state.ensure_evicted()

    t_out = timed(other.pool_evict, setup=setup, repeat=3)
    t_in = timed(state.pool_restore, setup=setup, repeat=3)

    def both() -> None:
        other.pool.evict("run")
        state.pool.acquire("run")
        sync("cuda")
        other.pool.synchronize()

    return (t_out + t_in) / timed(both, setup=setup, repeat=3)


_STATES: dict[tuple[int, str], RunState] = {}


def state_for(rank: int, device: str) -> RunState:
    if (rank, device) not in _STATES:
        _STATES.clear()  # one at a time: r=64 holds ~1.8 GB with its copies
        _STATES[(rank, device)] = RunState(rank, device)
    return _STATES[(rank, device)]


# ---- pytest-benchmark ------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["to_host", "to_device"])
@pytest.mark.parametrize("method", ["pool", "pool_copy_only", "per_tensor"])
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("rank", RANKS)
def test_swap(benchmark, rank, device, method, direction):
    state = state_for(rank, device)
    benchmark.group = f"swap r={rank} {device} {direction}"
    if method == "pool":
        fn, setup = (
            (state.pool_evict, state.ensure_resident)
            if direction == "to_host"
            else (state.pool_restore, state.ensure_evicted)
        )
        benchmark.pedantic(fn, setup=setup, rounds=bench_rounds(5), iterations=1, warmup_rounds=1)
    elif method == "pool_copy_only":
        benchmark.pedantic(
            state.copy_only, args=(direction,), rounds=bench_rounds(5), iterations=1, warmup_rounds=1
        )
    else:
        baseline = PerTensor(state)
        fn = baseline.to_host if direction == "to_host" else baseline.to_device
        benchmark.pedantic(fn, rounds=bench_rounds(5), iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.min
    benchmark.extra_info.update(
        state_bytes=state.nbytes, tensors=len(state.refs), gbps=round(state.nbytes / seconds / 1e9, 2)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rank", RANKS)
def test_pool_vs_pinned_link_and_hidden_share(benchmark, rank):
    state = state_for(rank, "cuda")
    link = pinned_link_gbps()
    pool_h2d = state.nbytes / timed(state.pool_restore, setup=state.ensure_evicted) / 1e9
    pool_d2h = state.nbytes / timed(state.pool_evict, setup=state.ensure_resident) / 1e9
    hidden = hidden_fraction(state)
    duplex = duplex_speedup(state, RunState(rank, "cuda"))
    benchmark.group = "pool vs link"
    benchmark.extra_info.update(
        link_h2d_gbps=round(link["h2d"], 2),
        link_d2h_gbps=round(link["d2h"], 2),
        pool_h2d_gbps=round(pool_h2d, 2),
        pool_d2h_gbps=round(pool_d2h, 2),
        h2d_fraction_of_link=round(pool_h2d / link["h2d"], 3),
        d2h_fraction_of_link=round(pool_d2h / link["d2h"], 3),
        prefetch_hidden_fraction=round(hidden, 3),
        evict_plus_restore_duplex_speedup=round(duplex, 2),
    )
    benchmark.pedantic(state.pool_restore, setup=state.ensure_evicted, rounds=bench_rounds(3), iterations=1)


# ---- python benchmarks/bench_state_swap.py ---------------------------------------------------------
def report() -> None:
    print(
        f"{'rank':>4} {'device':>6} {'direction':>9} {'MB':>7} {'pool GB/s':>10} {'copy-only GB/s':>15} "
        f"{'per-tensor GB/s':>16} {'pool/per-tensor':>16} {'copy-only/per-tensor':>21}"
    )
    for rank in RANKS:
        for device in devices():
            state = state_for(rank, device)
            baseline = PerTensor(state)
            rows = {
                "to_host": (
                    timed(state.pool_evict, setup=state.ensure_resident),
                    timed(partial(state.copy_only, "to_host")),
                    timed(baseline.to_host),
                ),
                "to_device": (
                    timed(state.pool_restore, setup=state.ensure_evicted),
                    timed(partial(state.copy_only, "to_device")),
                    timed(baseline.to_device),
                ),
            }
            for direction, (t_pool, t_copy, t_base) in rows.items():
                gb = state.nbytes / 1e9
                print(
                    f"{rank:>4} {device:>6} {direction:>9} {state.nbytes / 1e6:>7.1f} {gb / t_pool:>10.2f} "
                    f"{gb / t_copy:>15.2f} {gb / t_base:>16.2f} {t_base / t_pool:>15.2f}x {t_base / t_copy:>20.2f}x"
                )
            if device == "cuda":
                link = pinned_link_gbps()
                h2d = state.nbytes / rows["to_device"][0] / 1e9
                d2h = state.nbytes / rows["to_host"][0] / 1e9
                print(
                    f"     link pinned h2d {link['h2d']:.1f} GB/s (pool {h2d / link['h2d']:.0%}), "
                    f"d2h {link['d2h']:.1f} GB/s (pool {d2h / link['d2h']:.0%}); "
                    f"prefetch hidden behind compute: {hidden_fraction(state):.0%}; "
                    f"evict + restore together: {duplex_speedup(state, RunState(rank, device)):.2f}x faster"
                )
            del baseline


if __name__ == "__main__":
    report()
