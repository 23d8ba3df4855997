"""List and Range: validation, grid points, random draws."""

from __future__ import annotations

import math
import random

import pytest

from rapidfire_core.automl import List, Range
from rapidfire_core.errors import ConfigError


def test_list_requires_nonempty_python_list():
    assert List([1, 2]).values == [1, 2]
    with pytest.raises(ConfigError, match="at least one"):
        List([])
    with pytest.raises(ConfigError, match="python list"):
        List(3)
    with pytest.raises(ConfigError, match="python list"):
        List("abc")


def test_range_infers_dtype_and_validates():
    assert Range(1, 8).dtype == "int"
    assert Range(1, 8.0).dtype == "float"
    assert Range(1e-5, 1e-3).dtype == "float"
    assert Range(1, 8, dtype="float").start == 1.0
    with pytest.raises(ConfigError, match="start > 0"):
        Range(0.0, 1.0, log=True)
    with pytest.raises(ConfigError, match="start <= end"):
        Range(2, 1)
    with pytest.raises(ConfigError, match="mutually exclusive"):
        Range(1, 10, step=2, num_points=3)
    with pytest.raises(ConfigError, match="num_points"):
        Range(1, 10, num_points=0)
    with pytest.raises(ConfigError, match="integral bounds"):
        Range(1.5, 4, dtype="int")
    with pytest.raises(ConfigError, match="numbers"):
        Range(True, 4)


def test_range_grid_linear_log_int_and_step():
    assert Range(0.0, 1.0, num_points=5).grid() == [0.0, 0.25, 0.5, 0.75, 1.0]
    log_points = Range(1e-5, 1e-3, log=True, num_points=3).grid()
    assert log_points[0] == 1e-5 and log_points[-1] == 1e-3
    assert math.isclose(log_points[1], 1e-4, rel_tol=1e-12)
    # int points are rounded and de-duplicated: 1, 1.43, 1.86, ... -> 1, 2, 3, 4
    assert Range(1, 4, num_points=8).grid() == [1, 2, 3, 4]
    assert Range(8, 64, log=True, num_points=4).grid() == [8, 16, 32, 64]
    assert Range(2, 11, step=3).grid() == [2, 5, 8, 11]
    with pytest.raises(ConfigError, match="num_points"):
        Range(1e-5, 1e-3).grid()


def test_range_samples_within_bounds_with_dtype():
    rng = random.Random(0)
    ints = [Range(3, 9).sample(rng) for _ in range(500)]
    assert all(isinstance(v, int) and 3 <= v <= 9 for v in ints)
    assert set(ints) == set(range(3, 10))
    floats = [Range(0.5, 0.75).sample(rng) for _ in range(500)]
    assert all(isinstance(v, float) and 0.5 <= v <= 0.75 for v in floats)
    stepped = {Range(0, 10, step=5).sample(rng) for _ in range(200)}
    assert stepped == {0, 5, 10}


def test_log_range_is_log_uniform():
    rng = random.Random(1)
    knob = Range(1e-6, 1e-2, log=True)
    draws = [knob.sample(rng) for _ in range(4000)]
    assert all(1e-6 <= v <= 1e-2 for v in draws)
    # log-uniform: each decade gets ~1/4 of the draws; uniform would put ~90% in the top decade
    for lo in (1e-6, 1e-5, 1e-4, 1e-3):
        share = sum(lo <= v < lo * 10 for v in draws) / len(draws)
        assert 0.2 < share < 0.3, (lo, share)
    int_draws = [Range(1, 1024, log=True).sample(rng) for _ in range(2000)]
    assert all(isinstance(v, int) and 1 <= v <= 1024 for v in int_draws)
    assert sum(v <= 32 for v in int_draws) / len(int_draws) > 0.4  # uniform would give ~3%
