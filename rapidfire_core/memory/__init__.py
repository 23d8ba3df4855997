"""Run state off the GPU: a pinned host arena, batched async swaps, budgeted residency.

- `layout`: one run's tensors packed into one aligned byte range, with a manifest.
- `state_refs`: where a run's tensors live (parameter `.data`, optimizer state), to re-home them.
- `pool`: `StatePool` put / get / evict / prefetch / snapshot / load / drop, by run id.
- `policy`: evict the run needed furthest in the future.
- `residency`: `RunResidency`, the scheduler's hooks (`run_fit(..., gpu_state_budget=...)`).

Park and restore one run (its adapter's parameters and its optimizer's state tensors)::

    pool = StatePool("cuda:0", capacity_bytes=8 << 30)           # or "cpu"
    pool.put("run-1", run_state_refs(model, "run-1", optimizer))  # packed, still usable in place
    pool.evict("run-1")                                           # device memory released
    pool.acquire("run-1")                                         # restored, bit-identical

Guide with runnable examples: docs/low-level-api.md.

The bytes move in the compiled module (`rapidfire_core._C.HostArena`, `CopyEngine`); this
package needs it (`NativeUnavailableError` otherwise) only when a pool is created.
"""

from rapidfire_core.memory.layout import ALIGNMENT, StateLayout, TensorEntry
from rapidfire_core.memory.policy import furthest_first, plan_evictions
from rapidfire_core.memory.pool import PoolError, StatePool
from rapidfire_core.memory.residency import RunResidency, budget_bytes
from rapidfire_core.memory.sizes import format_bytes, parse_bytes
from rapidfire_core.memory.state_refs import DictRef, ParamRef, TensorRef, run_state_refs

__all__ = [
    "ALIGNMENT",
    "DictRef",
    "ParamRef",
    "PoolError",
    "RunResidency",
    "StateLayout",
    "StatePool",
    "TensorEntry",
    "TensorRef",
    "budget_bytes",
    "format_bytes",
    "furthest_first",
    "parse_bytes",
    "plan_evictions",
    "run_state_refs",
]
