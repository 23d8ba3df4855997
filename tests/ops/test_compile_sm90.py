"""Every Triton kernel compiles for sm_90 (H100) without a GPU: TTIR -> PTX -> cubin via ptxas.

Runs ``python benchmarks/compile_check.py --quick`` (the launches of the ops' own
launchers with the largest tiles, per kernel and dtype) in a fresh process with
``TRITON_INTERPRET`` unset (the interpreter replaces @triton.jit functions) and an empty
Triton cache (a cached cubin would prove nothing).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rapidfire_core.ops import HAS_TRITON

# A dev tool, not in the installed package.
COMPILE_CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "compile_check.py"


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_every_kernel_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silence triton 3.9's default-change warning
    proc = subprocess.run(
        [sys.executable, str(COMPILE_CHECK), "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    if "ptxas" in out and ("not found" in out or "No such file" in out):
        pytest.skip(f"no usable ptxas for the cubin step: {out[-500:]}")
    assert proc.returncode == 0, out[-4000:]
    compiled = re.findall(r"^ok   (\w+)\[(\w+)\].*: (\d+) regs, (\d+) B spilled", out, flags=re.M)
    # Every kernel in every dtype, as the ops launch them (recorded from the launchers).
    assert {(kernel, dtype) for kernel, dtype, _, _ in compiled} == {
        (kernel, dtype) for kernel in ("shrink", "expand", "wgrad") for dtype in ("bf16", "fp16", "fp32")
    }
    assert re.search(rf"^{len(compiled)}/{len(compiled)} kernel launches compiled for sm_90", out, flags=re.M)
    # The largest tiles fit in registers: at most a few hundred bytes spilled per thread (fp32
    # 128x128 wgrad tiles once spilled 16-20 KB to the stack).
    spills = {f"{kernel}[{dtype}]": int(spilled) for kernel, dtype, _, spilled in compiled}
    assert max(spills.values()) <= 512, spills
