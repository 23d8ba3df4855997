"""The time-sliced scheduler's use of the pool: which runs' state is on the device.

`run_fit(..., gpu_state_budget=B)` bounds the device memory of run state (adapter weights,
optimizer moments, step counters) that stays on the device:

    resident state bytes <= max(B, bytes of the run taking its turn)   at every moment

The run taking its turn is always resident. Before its turn, other runs are evicted (needed
furthest in the future first) to make room for it, and it is restored if it was evicted; then
the NEXT run is prefetched on the side stream while this one computes, when it fits in B
(evicting only runs needed after it). After the turn, runs are evicted until the total is
<= B. B = 0: only the run taking its turn is on the device; every run is evicted after its
turn and restored before its next one. No budget (None): no pool at all, as before.

Runs are packed when the scheduler starts (adapter weights only: optimizers do not exist
yet) and re-packed after the turn in which their optimizer creates its state (detected by
`optimizer_fingerprint`, O(1) per turn). The host arena is sized once, at start, for every
run's weights plus two Adam moments and a step counter per tensor (x1.25 headroom); override
it with RAPIDFIRE_HOST_POOL_BYTES. If a run does not fit (e.g. an optimizer with more state)
it simply stays resident, with a warning: correctness never depends on the pool.

A restored run's state lives at a new device address (same values, shapes and alignment).
Models that bake parameter addresses into captured work (CUDA graphs, e.g. torch.compile's
"reduce-overhead" mode) must not be given a budget.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from rapidfire_core._native import NativeUnavailableError
from rapidfire_core.memory.layout import ALIGNMENT, align_up
from rapidfire_core.memory.policy import next_use, plan_evictions
from rapidfire_core.memory.pool import PoolUnavailableError, StatePool
from rapidfire_core.memory.sizes import parse_bytes
from rapidfire_core.memory.state_refs import OPTIM, PARAM, optimizer_fingerprint, run_state_refs

HOST_POOL_ENV = "RAPIDFIRE_HOST_POOL_BYTES"


def _optimizer_of(run: Any) -> Any:
    trainer = getattr(run, "trainer", None)
    return getattr(trainer, "optimizer", None) if trainer is not None else None


def run_refs(run: Any) -> list:
    """The TensorRefs of a run's trainable state (see `state_refs.run_state_refs`)."""
    return run_state_refs(getattr(run, "model", None), getattr(run, "adapter_name", None), _optimizer_of(run))


def estimate_state_bytes(refs: Sequence, alignment: int = ALIGNMENT) -> int:
    """Arena bytes a run will need: exact when its optimizer state exists, else its weights
    plus two moments (Adam) and one step counter per weight tensor."""
    if any(ref.kind == OPTIM for ref in refs):
        return sum(align_up(ref.get().nbytes, alignment) for ref in refs)
    return sum(3 * align_up(ref.get().nbytes, alignment) + alignment for ref in refs if ref.kind == PARAM)


class RunResidency:
    """Budgeted residency of the runs' state for the run controller (see the module docstring)."""

    def __init__(self, budget_bytes: int, *, host_capacity: int | None = None, pin: str = "auto") -> None:
        if budget_bytes is None or budget_bytes < 0:
            raise ValueError(f"gpu_state_budget must be >= 0 bytes, got {budget_bytes!r}")
        self.budget = int(budget_bytes)
        self.host_capacity = host_capacity
        self.pin = pin
        self.pool: StatePool | None = None
        self._fingerprints: dict[Any, tuple] = {}  # run_id -> optimizer fingerprint when packed

    # ---- scheduler hooks ---------------------------------------------------------------------
    def start(self, runs: Sequence[Any]) -> None:
        """Pack every run and evict down to the budget (the first run to train stays longest)."""
        refs = {run.run_id: run_refs(run) for run in runs}
        device = next((ref.get().device for rs in refs.values() for ref in rs if ref.kind == PARAM), None)
        if device is None or device.type not in ("cuda", "cpu"):
            return  # nothing to pool (no adapters yet, or a meta/offloaded model)
        try:
            self.pool = StatePool(device, self._capacity(refs.values()), pin=self.pin)
        except (PoolUnavailableError, NativeUnavailableError) as exc:
            warnings.warn(f"gpu_state_budget is ignored, every run stays on the device: {exc}", stacklevel=2)
            return
        for run in runs:
            self._pack(run, refs[run.run_id])
        self._evict_down_to(self.budget, [run.run_id for run in runs])

    def before_turn(self, run: Any, upcoming: Sequence[Any]) -> None:
        """Make `run` resident (no host sync on CUDA), then prefetch the next run if it fits."""
        key = run.run_id
        if key not in self._fingerprints:
            return
        order = [key] + [r.run_id for r in upcoming]
        if not self.pool.is_resident(key):
            self._evict_down_to(self.budget - self.pool.device_bytes(key), order, keep=frozenset({key}))
        self.pool.acquire(key)
        self._prefetch_next(key, order)

    def after_turn(self, run: Any, upcoming: Sequence[Any]) -> None:
        """Re-pack `run` if its optimizer created state, then evict down to the budget."""
        key = run.run_id
        if key in self._fingerprints:
            fingerprint = optimizer_fingerprint(_optimizer_of(run))
            if fingerprint != self._fingerprints[key]:
                self._pack(run, run_refs(run), fingerprint)
        self._evict_down_to(self.budget, [r.run_id for r in upcoming])

    def add(self, run: Any) -> None:
        """A run that joined after `start` (a clone, a resumed run of an earlier run_fit)."""
        if self.pool is None:
            self.start([run])
        elif run.run_id not in self._fingerprints:
            self._pack(run, run_refs(run))

    def make_resident(self, run: Any) -> None:
        """Restore a pooled run's state to the device now (e.g. to read its weights)."""
        if run.run_id in self._fingerprints:
            self.pool.acquire(run.run_id)

    def park(self, run: Any) -> None:
        """A stopped run waits in the host pool (all of its state kept) until it is resumed."""
        if run.run_id in self._fingerprints and self.pool.is_resident(run.run_id):
            self.pool.evict(run.run_id)

    def forget(self, run: Any) -> None:
        """A finished run: its weights get memory of their own, its optimizer state is let go."""
        self._drop(run, keep=lambda ref: ref.kind == PARAM)

    def discard(self, run: Any) -> None:
        """A deleted run: all of its state is let go, nothing is restored."""
        self._drop(run, keep=lambda ref: False)

    def _drop(self, run: Any, keep) -> None:
        key = run.run_id
        if key in self._fingerprints:
            self.pool.drop(key, keep=keep)  # may raise (OOM restoring what is kept)
            del self._fingerprints[key]  # only once the pool no longer holds it

    def close(self) -> None:
        """Runs still pooled (stopped ones wait for a later resume) get memory of their own, with
        every tensor's value, before the arena goes."""
        if self.pool is None:
            return
        for key in list(self._fingerprints):
            try:
                self.pool.drop(key)
            except Exception as exc:  # noqa: BLE001 - e.g. no device memory to restore it
                warnings.warn(f"run {key}: its pooled state could not be restored ({exc})", stacklevel=2)
            del self._fingerprints[key]
        self.pool.close()

    def stats(self) -> dict:
        return {"budget": self.budget, **(self.pool.stats() if self.pool is not None else {})}

    # ---- internals ------------------------------------------------------------------------------
    def _capacity(self, all_refs) -> int:
        explicit = self.host_capacity or parse_bytes(os.environ.get(HOST_POOL_ENV) or None, HOST_POOL_ENV)
        if explicit:
            return explicit
        estimates = [estimate_state_bytes(refs) for refs in all_refs] or [0]
        # 1.25x for fragmentation, plus one run's weights: re-packing holds both slots briefly.
        return int(1.25 * sum(estimates)) + max(estimates) + (1 << 20)

    def _pack(self, run: Any, refs: list, fingerprint: tuple | None = None) -> None:
        from rapidfire_core._C import ArenaExhaustedError

        key = run.run_id
        try:
            self.pool.put(key, refs)
        except torch.OutOfMemoryError as exc:
            # Re-packing needs the new flat buffer next to the old one. Nothing changed: the run
            # keeps its previous packing (what is not in it stays in place) and retries next turn.
            warnings.warn(f"run {key}: re-packing its state ran out of device memory ({exc})", stacklevel=2)
            return
        except ArenaExhaustedError as exc:
            warnings.warn(
                f"run {key}: its state does not fit in the host pool ({exc}); it stays on the device. "
                f"Set {HOST_POOL_ENV} (e.g. '16GiB') to give the pool more room.",
                RuntimeWarning,
                stacklevel=2,
            )
            if key in self.pool:
                self.pool.drop(key)  # resident now: every tensor keeps its value
            self._fingerprints.pop(key, None)
            return
        self._fingerprints[key] = fingerprint or optimizer_fingerprint(_optimizer_of(run))

    def _resident(self) -> dict[Any, int]:
        return {k: self.pool.device_bytes(k) for k in self._fingerprints if self.pool.is_resident(k)}

    def _evict_down_to(self, limit: int, upcoming: Sequence[Any], keep: frozenset = frozenset()) -> bool:
        """Evict (furthest next use first, never `keep`) until resident <= limit, as far as possible."""
        if self.pool is None:
            return True
        resident = self._resident()
        plan = plan_evictions(resident, limit, upcoming, evictable=lambda k: k not in keep)
        if plan is None:  # cannot reach the limit: evict every evictable run anyway
            plan = [k for k in resident if k not in keep]
        for key in plan:
            self.pool.evict(key)
        return sum(resident.values()) - sum(resident[k] for k in plan) <= limit

    def _prefetch_next(self, key: Any, order: Sequence[Any]) -> None:
        following = [k for k in order[1:] if k in self._fingerprints and k != key]
        if not following or self.pool.is_resident(following[0]):
            return
        nxt = following[0]
        limit = self.budget - self.pool.device_bytes(nxt)
        positions = next_use(order)
        # Only runs needed after `nxt` may make room for it; the current run never.
        later = lambda k: k != key and positions.get(k, len(order)) > positions[nxt]  # noqa: E731
        plan = plan_evictions(self._resident(), limit, order, evictable=later)
        if plan is None:
            return  # it does not fit: it will be restored right before its turn instead
        for victim in plan:
            self.pool.evict(victim)
        try:
            self.pool.prefetch(nxt)
        except torch.OutOfMemoryError:
            # Best effort: a prefetch must never fail the run taking its turn now. `nxt` is
            # restored right before its own turn, where running out of memory is its own error.
            return


def budget_bytes(value: Any) -> int | None:
    """`gpu_state_budget` as bytes (None: no pool); ValueError naming the option otherwise."""
    return parse_bytes(value, "gpu_state_budget")
