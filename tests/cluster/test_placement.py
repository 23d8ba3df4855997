"""Placement at chunk boundaries: balanced by measured time per chunk, a taker stays unless a
move pays, lost executors' takers go to live ones; rotation moves every taker."""

from __future__ import annotations

from rapidfire_core.cluster.placement import BalancedPlacement, Item, RotatingPlacement


def test_unmeasured_takers_spread_evenly_and_stay_where_they_are():
    items = [Item(1, None, 0), Item(2, None, 1), Item(3, None, 0), Item(4, None, 1)]
    assert BalancedPlacement().assign(items, [0, 1], move_cost=0.0) == {1: 0, 2: 1, 3: 0, 4: 1}


def test_measured_times_balance_the_round():
    # 6 s, 3 s, 2 s, 1 s all on executor 0: 6 | 3+2+1 (a round of 6 s, not 12 s)
    items = [Item(1, 6.0, 0), Item(2, 3.0, 0), Item(3, 2.0, 0), Item(4, 1.0, 0)]
    assert BalancedPlacement().assign(items, [0, 1], move_cost=0.0) == {1: 0, 2: 1, 3: 1, 4: 1}


def test_a_taker_stays_where_it_is_unless_moving_saves_more_than_a_move_costs():
    items = [Item(1, 2.0, 0), Item(2, 2.0, 0)]
    assert BalancedPlacement().assign(items, [0, 1], move_cost=5.0) == {1: 0, 2: 0}
    assert BalancedPlacement().assign(items, [0, 1], move_cost=0.5) == {1: 0, 2: 1}


def test_takers_of_a_lost_executor_go_to_the_live_ones():
    items = [Item(1, 1.0, 1), Item(2, 1.0, 0)]
    assert BalancedPlacement().assign(items, [0], move_cost=0.0) == {1: 0, 2: 0}


def test_rotation_moves_every_taker_to_the_next_executor():
    items = [Item(1, None, 0), Item(2, None, 1), Item(3, None, 2)]
    assert RotatingPlacement().assign(items, [0, 1], move_cost=0.0) == {1: 1, 2: 0, 3: 0}
