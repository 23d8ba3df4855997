"""The fault hook kills its own process with SIGKILL at the armed point and count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from rapidfire_core.control import faults


def _run(fault: str) -> subprocess.CompletedProcess:
    script = (
        "from rapidfire_core.control.faults import fault_point\n"
        "for i in range(5):\n"
        "    print(i, flush=True)\n"
        "    fault_point('mid_chunk')\n"
    )
    env = dict(os.environ, RAPIDFIRE_FAULT=fault, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_the_armed_point_kills_on_its_count_and_others_do_nothing():
    killed = _run("mid_chunk:3")
    assert killed.returncode == -signal.SIGKILL and killed.stdout.split() == ["0", "1", "2"]
    other = _run("metric_flush:1")
    assert other.returncode == 0 and other.stdout.split() == ["0", "1", "2", "3", "4"]


def test_an_unknown_point_is_refused():
    with pytest.raises(ValueError, match="unknown fault point 'mid_chunck'"):
        faults._parse("mid_chunck:2")
    assert faults._parse("mid_chunk:2, checkpoint_write") == {"mid_chunk": 2, "checkpoint_write": 1}
