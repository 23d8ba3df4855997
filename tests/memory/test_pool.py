"""StatePool on the CPU path: a real run's adapter + optimizer state goes through the pool
and comes back bit-identical; training that is evicted between steps equals training that
never left; snapshots, loads, drops, exhaustion; the scheduler's budget policy."""

from __future__ import annotations

import copy
import io
from types import SimpleNamespace

import pytest
import torch

from rapidfire_core import _native
from rapidfire_core.memory import PoolError, RunResidency, StatePool, run_state_refs
from rapidfire_core.memory.state_refs import PARAM, DictRef, ParamRef

C = _native.load_native()
pytestmark = pytest.mark.skipif(C is None, reason=f"rapidfire_core._C is not built: {_native.native_error()}")


# ---- a real run: tiny Llama + LoRA adapter + AdamW, as TRL builds it ---------------------------
def _lora_model(model_dir: str, adapter: str = "run_1", targets=("q_proj", "v_proj", "down_proj")):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=list(targets))
    return get_peft_model(base, config, adapter_name=adapter)


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def _train_step(model, optimizer, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # same dropout masks for the twins
    ids = torch.randint(3, 100, (2, 12))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _values(refs) -> dict[str, torch.Tensor]:
    return {ref.name: ref.get().clone() for ref in refs}


@pytest.fixture
def pool():
    p = StatePool("cpu", 64 << 20)
    yield p
    p.close()


@pytest.mark.parametrize("fused", [True, False])
def test_real_run_state_round_trip_is_bit_identical(tiny_model_dir, pool, fused):
    model = _lora_model(tiny_model_dir)
    optimizer = torch.optim.AdamW(_trainable(model), lr=1e-3, fused=fused)
    for seed in range(2):
        _train_step(model, optimizer, seed)
    refs = run_state_refs(model, "run_1", optimizer)
    kinds = {ref.name.rsplit("/", 1)[-1] for ref in refs if ref.kind != PARAM}
    assert kinds == {"exp_avg", "exp_avg_sq", "step"}
    before = _values(refs)

    layout = pool.put("run_1", refs)
    assert len(layout.entries) == len(refs)  # everything packed: weights, moments, steps
    flat = refs[0].get().untyped_storage()
    assert all(ref.get().untyped_storage().data_ptr() == flat.data_ptr() for ref in refs)
    assert flat.nbytes() == layout.device_bytes
    assert {k: torch.equal(v, before[k]) for k, v in _values(refs).items()} == dict.fromkeys(before, True)

    pool.evict("run_1")
    pool.synchronize()
    assert not pool.is_resident("run_1")
    assert all(ref.get().untyped_storage().nbytes() == 0 for ref in refs)  # no memory held
    assert all(ref.get().shape == before[ref.name].shape for ref in refs)  # shapes kept
    parked = pool.host_views("run_1")
    assert all(torch.equal(parked[name], value) for name, value in before.items())

    pool.prefetch("run_1")
    got = pool.get("run_1")  # acquire + {name: tensor}
    assert got.keys() == before.keys()
    for name, value in before.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name
    assert pool.stats()["bytes_to_host"] == pool.stats()["bytes_to_device"] == layout.device_bytes


def test_training_evicted_every_step_equals_never_evicted(tiny_model_dir, pool):
    model = _lora_model(tiny_model_dir)
    twin = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(_trainable(model), lr=2e-3, weight_decay=0.1)
    twin_optimizer = torch.optim.AdamW(_trainable(twin), lr=2e-3, weight_decay=0.1)

    pool.put("run", run_state_refs(model, "run_1", optimizer))  # weights only: no state yet
    losses, twin_losses = [], []
    for step in range(6):
        pool.acquire("run")
        losses.append(_train_step(model, optimizer, seed=100 + step))
        twin_losses.append(_train_step(twin, twin_optimizer, seed=100 + step))
        pool.put("run", run_state_refs(model, "run_1", optimizer))  # re-packs once, after step 0
        pool.evict("run")
        if step % 2:
            pool.prefetch("run")  # sometimes ahead of time, sometimes at acquire
    pool.acquire("run")
    assert pool.stats()["packs"] == 2
    assert torch.equal(torch.stack(losses), torch.stack(twin_losses))
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    for p, q in zip(_trainable(model), _trainable(twin), strict=True):
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, twin_optimizer.state[q][key]), key


def test_put_is_free_when_nothing_changed(pool):
    w = torch.nn.Parameter(torch.randn(10, 10))
    refs = [ParamRef("w", w)]
    layout = pool.put("a", refs)
    ptr = w.data_ptr()
    assert pool.put("a", refs) is layout and w.data_ptr() == ptr
    assert pool.stats()["packs"] == 1


def test_tensors_the_pool_does_not_own_are_left_alone(pool):
    shared = torch.randn(8, 8)
    big = torch.randn(100)
    tied_a = torch.nn.Parameter(shared)
    tied_b = torch.nn.Parameter(shared)  # same storage as tied_a: moving one would untie them
    strided = torch.nn.Parameter(torch.randn(8, 8).t())  # not contiguous
    part = torch.nn.Parameter(big[10:20])  # a view of something larger
    own = torch.nn.Parameter(torch.randn(3))
    refs = [
        ParamRef(n, p) for n, p in [("a", tied_a), ("b", tied_b), ("s", strided), ("v", part), ("o", own)]
    ]
    layout = pool.put("x", refs)
    assert [e.name for e in layout.entries] == ["o"]
    pool.evict("x")
    pool.acquire("x")
    assert tied_a.data_ptr() == tied_b.data_ptr() == shared.data_ptr()
    assert part.data_ptr() == big[10:].data_ptr()


def test_snapshot_materialize_and_load(pool):
    w = torch.nn.Parameter(torch.arange(12, dtype=torch.float32).view(3, 4))
    state = {"exp_avg": torch.full((3, 4), 0.5), "step": torch.tensor(3.0)}
    refs = [
        ParamRef("param/w", w),
        DictRef("optim/w/exp_avg", state, "exp_avg"),
        DictRef("optim/w/step", state, "step"),
    ]
    pool.put("run", refs)
    pool.snapshot("run", "warm")  # from the resident state
    with torch.no_grad():
        w.add_(100.0)
    state["step"].add_(1)

    warm = pool.materialize("warm")
    assert torch.equal(warm["param/w"], torch.arange(12, dtype=torch.float32).view(3, 4))
    assert float(warm["optim/w/step"]) == 3.0
    assert warm["param/w"].untyped_storage().data_ptr() != w.untyped_storage().data_ptr()
    assert pool.get("warm").keys() == warm.keys()

    pool.load("warm", "run")  # resident destination: H2D into its flat buffer
    pool.acquire("run")
    assert torch.equal(w, warm["param/w"]) and float(state["step"]) == 3.0

    with torch.no_grad():
        w.mul_(2)
    pool.evict("run")
    pool.snapshot("run", "doubled")  # from the evicted state, inside the arena
    pool.load("warm", "run")  # evicted destination: copy inside the arena
    pool.acquire("run")
    assert torch.equal(w, warm["param/w"])
    assert torch.equal(pool.materialize("doubled")["param/w"], 2 * warm["param/w"])

    with pytest.raises(PoolError, match="snapshot"):
        pool.evict("warm")
    with pytest.raises(PoolError, match="resident"):
        pool.load("run", "run")
    other = torch.nn.Parameter(torch.zeros(2))
    pool.put("other", [ParamRef("param/w", other)])
    with pytest.raises(PoolError, match="layouts differ"):
        pool.load("warm", "other")
    with pytest.raises(PoolError, match="already exists"):
        pool.snapshot("run", "warm")


def test_host_views_own_only_their_slot(pool):
    """A view handed out of the arena has a storage of its slot's bytes alone: saving it (or an
    optimizer `step` packed in the host section on a GPU) writes that slot, not the arena."""
    w = torch.nn.Parameter(torch.arange(6, dtype=torch.float32))
    pool.put("run", [ParamRef("param/w", w)])
    pool.evict("run")
    views = pool.host_views("run")
    assert torch.equal(views["param/w"], torch.arange(6, dtype=torch.float32))
    slot = pool.layout("run").total_bytes
    assert views["param/w"].untyped_storage().nbytes() == slot < pool.arena.capacity
    saved = io.BytesIO()
    torch.save(views, saved)
    assert saved.tell() < slot + 4096
    assert torch.equal(pool.host_views("run")["param/w"], views["param/w"])  # the same bytes
    offset = pool.arena.allocate(1024)
    part = pool.slot_bytes(offset, 1024)
    part[:3] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    assert bytes(pool.arena.view(offset, 3)) == b"\x01\x02\x03"  # zero-copy
    with pytest.raises(IndexError):
        pool.slot_bytes(offset, 1024 + pool.arena.alignment)  # beyond the slot


def test_drop_keeps_chosen_tensors_in_their_own_memory(pool):
    w = torch.nn.Parameter(torch.randn(5, 5))
    state = {"exp_avg": torch.randn(5, 5)}
    expected_w, expected_m = w.detach().clone(), state["exp_avg"].clone()
    pool.put("run", [ParamRef("w", w), DictRef("m", state, "exp_avg")])
    used = pool.arena.stats()["used"]
    assert used > 0
    pool.evict("run")
    pool.drop("run", keep=lambda ref: ref.kind == PARAM)  # restores first, then copies out
    assert "run" not in pool and pool.arena.stats()["used"] == 0
    assert torch.equal(w, expected_w) and w.untyped_storage().nbytes() == w.nbytes
    assert state["exp_avg"].numel() == 0  # let go
    del expected_m


def test_exhaustion_leaves_the_tensors_untouched():
    small = StatePool("cpu", 4096)
    w = torch.nn.Parameter(torch.randn(64, 64))  # 16 KiB > 4 KiB
    ptr = w.data_ptr()
    with pytest.raises(C.ArenaExhaustedError, match="requested 16384 bytes"):
        small.put("big", [ParamRef("w", w)])
    assert w.data_ptr() == ptr and "big" not in small


def test_pool_needs_the_native_module(monkeypatch):
    monkeypatch.setenv("RAPIDFIRE_DISABLE_NATIVE", "1")
    _native._reset_for_tests()
    try:
        with pytest.raises(_native.NativeUnavailableError, match="run-state pool"):
            StatePool("cpu", 1 << 20)
    finally:
        monkeypatch.delenv("RAPIDFIRE_DISABLE_NATIVE")
        _native._reset_for_tests()


# ---- the scheduler's budget policy (RunResidency) on fake runs ---------------------------------
class _FakeRun(SimpleNamespace):
    pass


def _fake_runs(n: int, numel: int = 1000):
    runs = []
    for i in range(n):
        model = torch.nn.Module()
        model.lora = torch.nn.ParameterDict({f"run_{i}": torch.nn.Parameter(torch.full((numel,), float(i)))})
        runs.append(_FakeRun(run_id=i, model=model, adapter_name=f"run_{i}", trainer=None))
    return runs


def _weights(run):
    return run.model.lora[f"run_{run.run_id}"]


@pytest.mark.parametrize("room_for", [0, 1, 2, 3, 4])
def test_residency_keeps_the_budget_and_prefetches_the_next_run(room_for):
    runs = _fake_runs(4)
    size = 4096  # 1000 float32 = 4000 bytes, aligned to 512
    residency = RunResidency(room_for * size)
    residency.start(runs)
    pool = residency.pool
    assert pool.resident_bytes <= room_for * size
    for _round in range(3):
        for index, run in enumerate(runs):
            upcoming = runs[index + 1 :] + runs
            residency.before_turn(run, upcoming)
            assert pool.is_resident(run.run_id)
            assert pool.resident_bytes <= max(room_for, 1) * size
            nxt = runs[(index + 1) % 4]
            assert pool.is_resident(nxt.run_id) == (room_for >= 2)  # prefetched when it fits
            with torch.no_grad():
                _weights(run).add_(1.0)  # "train"
            residency.after_turn(run, upcoming)
            assert pool.resident_bytes <= room_for * size
    for run in runs:
        residency.before_turn(run, [])
        assert torch.equal(_weights(run), torch.full((1000,), float(run.run_id + 3)))
        residency.forget(run)
    assert pool.arena.stats()["used"] == 0
    stats = residency.stats()
    if room_for < 4:
        assert stats["evictions"] > 0
    else:
        assert stats["evictions"] == 0
    residency.close()


def test_residency_without_poolable_state_is_a_no_op():
    runs = [_FakeRun(run_id=0, model=None, adapter_name=None, trainer=None)]
    residency = RunResidency(0)
    residency.start(runs)
    assert residency.pool is None
    residency.before_turn(runs[0], [])
    residency.after_turn(runs[0], [])
    residency.forget(runs[0])
    residency.close()


def test_a_run_that_does_not_fit_the_host_pool_stays_resident():
    runs = _fake_runs(2, numel=4096)
    residency = RunResidency(0, host_capacity=20_000)  # room for one 16 KiB run, not two
    with pytest.warns(RuntimeWarning, match="stays on the device"):
        residency.start(runs)
    pooled = [run for run in runs if run.run_id in residency.pool]
    assert len(pooled) == 1
    for run in runs:
        residency.before_turn(run, [])
        assert torch.equal(_weights(run), torch.full((4096,), float(run.run_id)))
        residency.after_turn(run, runs)
    residency.close()


def test_a_failed_prefetch_of_the_next_run_does_not_fail_this_turn(monkeypatch):
    """Prefetching is best effort: out of device memory while prefetching run 1 must not raise
    in run 0's turn; run 1 is then restored right before its own turn."""
    runs = _fake_runs(2)
    residency = RunResidency(2 * 4096)
    residency.start(runs)
    residency.pool.evict(1)

    def out_of_memory(key):
        raise torch.OutOfMemoryError("simulated")

    with monkeypatch.context() as patch:
        patch.setattr(residency.pool, "prefetch", out_of_memory)
        residency.before_turn(runs[0], runs[1:])  # would prefetch run 1: fails quietly
    assert residency.pool.is_resident(0) and not residency.pool.is_resident(1)
    residency.before_turn(runs[1], [])
    assert torch.equal(_weights(runs[1]), torch.full((1000,), 1.0))
    residency.close()


def test_forget_that_fails_keeps_the_run_known_to_the_pool(monkeypatch):
    runs = _fake_runs(1)
    residency = RunResidency(0)
    residency.start(runs)

    def out_of_memory(key, keep=None):
        raise torch.OutOfMemoryError("simulated")

    with monkeypatch.context() as patch:
        patch.setattr(residency.pool, "drop", out_of_memory)
        with pytest.raises(torch.OutOfMemoryError):
            residency.forget(runs[0])
    residency.forget(runs[0])  # still known: a later forget releases it
    assert 0 not in residency.pool
    residency.close()


def test_snapshot_of_a_resident_run_is_its_state_at_that_moment():
    """A warm-start snapshot is taken while the run is resident and training goes on at once:
    the snapshot holds the values at snapshot time, even though its copy is asynchronous (32 MiB:
    the engine's threads copy it in pieces) and the next step writes the same buffer."""
    big = StatePool("cpu", 100 << 20)
    w = torch.nn.Parameter(torch.randn(8 << 20, generator=torch.Generator().manual_seed(0)))
    before = w.detach().clone()
    big.put("run", [ParamRef("param/w", w)])
    big.snapshot("run", "warm")
    with torch.no_grad():
        w.add_(1.0)  # the next optimizer step
    big.drop("run")  # and the run may even finish and be dropped
    assert torch.equal(big.materialize("warm")["param/w"], before)
    big.close()


def test_evicting_a_prefetch_that_was_never_acquired_keeps_the_state(pool):
    """The scheduler may prefetch a run and then evict it again before its turn (the budget
    changed its mind): the eviction must read the restored bytes, not a half-copied buffer.
    32 MiB state: the engine splits it into pieces that its threads copy concurrently."""
    big = StatePool("cpu", 80 << 20)
    w = torch.nn.Parameter(torch.randn(8 << 20, generator=torch.Generator().manual_seed(0)))
    expected = w.detach().clone()
    big.put("run", [ParamRef("param/w", w)])
    for _ in range(5):
        big.evict("run")
        big.prefetch("run")
        big.evict("run")  # no acquire in between
    big.acquire("run")
    assert torch.equal(w, expected)
    big.close()
