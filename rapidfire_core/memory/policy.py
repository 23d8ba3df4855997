"""Eviction order: the run needed furthest in the future goes first (Belady's rule).

The time-sliced scheduler knows its turn order, so the pool can evict optimally: with N runs
taking turns round-robin and room for k < N of them, evicting the run needed furthest ahead
(the one that just ran) leaves the next k runs resident, where LRU would evict exactly the
run needed next, every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence


def next_use(upcoming: Sequence[Hashable]) -> dict[Hashable, int]:
    """{key: index of its first appearance in `upcoming`}."""
    positions: dict[Hashable, int] = {}
    for index, key in enumerate(upcoming):
        positions.setdefault(key, index)
    return positions


def furthest_first(keys: Sequence[Hashable], upcoming: Sequence[Hashable]) -> list[Hashable]:
    """`keys` ordered by next use, latest first; keys never needed again come first (stable)."""
    positions = next_use(upcoming)
    return sorted(keys, key=lambda k: -positions.get(k, math.inf))


def plan_evictions(
    resident: Mapping[Hashable, int],
    limit: int,
    upcoming: Sequence[Hashable],
    evictable: Callable[[Hashable], bool] = lambda key: True,
) -> list[Hashable] | None:
    """Keys to evict, furthest next use first, until the resident bytes are <= `limit`.

    resident: {key: bytes} of what is on the device now. Returns [] when it already fits, and
    None when evicting every evictable key would still not be enough (then evict nothing).
    """
    total = sum(resident.values())
    if total <= limit:
        return []
    plan = []
    for key in furthest_first([k for k in resident if evictable(k)], upcoming):
        plan.append(key)
        total -= resident[key]
        if total <= limit:
            return plan
    return None
