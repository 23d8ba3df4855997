"""Which implementation runs: the reference by default, the Triton kernels only when opted in.

The kernels have not yet passed their GPU tests, so nobody may get them by default: a fresh
process registers no device kernel at all (checked in subprocesses, since this session's other
tests register them), ``RAPIDFIRE_LORA_BACKEND=triton`` or ``enable_triton_kernels()`` registers
them, and ``MultiLoraLinear`` takes the ops path exactly where the kernels are enabled. Also: the
fake kernels reject bad operands under torch.compile and trace symbolic shapes, and autograd
saves only what each backward reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rapidfire_core.lora import LoraBatch, MultiLoraLinear, lora_batch
from rapidfire_core.ops import (
    _backend,
    enable_triton_kernels,
    lora_expand,
    lora_shrink,
    multi_lora_add,
    triton_kernels,
    triton_kernels_enabled,
)
from tests.ops.helpers import make_problem

OPS = ("lora_shrink", "lora_shrink_backward", "lora_expand", "lora_expand_backward")
REPO = Path(__file__).resolve().parents[2]

# Prints, for a fresh import of the ops, which dispatch keys have a kernel of ours per op.
_PROBE = f"""
import json, torch
import rapidfire_core.ops as ops
x = torch.zeros(2, 2)
print(json.dumps({{
    "registered": {{
        op: [key for key in ("CUDA", "CPU") if torch._C._dispatch_has_kernel_for_dispatch_key("rapidfire::" + op, key)]
        for op in {OPS!r}
    }},
    "cpu_enabled": ops.triton_kernels_enabled(x),
    "cuda_enabled": "cuda" in ops._backend._registered and "cuda" not in ops._backend._switched_off,
}}))
"""


def _fresh_import(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("RAPIDFIRE_LORA_BACKEND", "TRITON_INTERPRET")}
    clean["PYTHONPATH"] = os.pathsep.join([str(REPO), clean.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", _PROBE], env=clean | env, capture_output=True, text=True, timeout=300
    )


def _probe(**env: str) -> dict:
    proc = _fresh_import(**env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_default_registers_no_kernel_on_any_device():
    """No opt-in: every op has only its default (reference) implementation, even with the Triton
    interpreter on (which could run the kernels on CPU)."""
    for env in ({}, {"TRITON_INTERPRET": "1"}, {"RAPIDFIRE_LORA_BACKEND": "torch"}):
        got = _probe(**env)
        assert got["registered"] == {op: [] for op in OPS}, env
        assert not got["cpu_enabled"] and not got["cuda_enabled"], env


@pytest.mark.skipif(not _backend.HAS_TRITON, reason="Triton is not installed")
def test_environment_opt_in_registers_the_kernels():
    got = _probe(RAPIDFIRE_LORA_BACKEND="triton")
    assert got["registered"] == {op: ["CUDA"] for op in OPS}  # CPU tensors stay on the reference
    assert got["cuda_enabled"] and not got["cpu_enabled"]
    got = _probe(RAPIDFIRE_LORA_BACKEND="triton", TRITON_INTERPRET="1")  # the CPU test suite's way
    assert got["registered"] == {op: ["CUDA", "CPU"] for op in OPS}
    assert got["cpu_enabled"]


def test_a_bad_environment_value_is_a_clear_error():
    proc = _fresh_import(RAPIDFIRE_LORA_BACKEND="auto")
    assert proc.returncode != 0
    assert "RAPIDFIRE_LORA_BACKEND must be one of ('torch', 'triton'), got 'auto'" in proc.stderr


def test_asking_for_triton_without_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_backend, "HAS_TRITON", False)
    monkeypatch.setattr(_backend, "TRITON_IMPORT_ERROR", ImportError("No module named 'triton'"))
    with pytest.raises(RuntimeError, match="Triton did not import: ImportError"):
        enable_triton_kernels()
    with pytest.raises(RuntimeError, match="Triton did not import"):
        with triton_kernels():
            pass


def test_enabling_is_idempotent_and_blocks_restore_the_state(kernel_device):
    x = torch.zeros(2, 2, device=kernel_device)
    assert not triton_kernels_enabled(x)  # outside any block: the default
    with triton_kernels(False):  # restores "off" after, whatever happens inside
        assert enable_triton_kernels() == enable_triton_kernels()
        assert kernel_device in enable_triton_kernels()
        assert triton_kernels_enabled(x)
        assert not triton_kernels_enabled(x.double())  # fp64 stays on the reference
        with triton_kernels(False):
            assert not triton_kernels_enabled(x)
        assert triton_kernels_enabled(x)
    assert not triton_kernels_enabled(x)
    with triton_kernels():
        assert triton_kernels_enabled(x)
    assert not triton_kernels_enabled(x)


def test_the_dispatcher_picks_the_implementation(kernel_device, monkeypatch):
    """One kernel per device: the registered Triton one when enabled, the reference otherwise,
    with no switch read in the op bodies (a spy on the launcher sees exactly the enabled calls)."""
    p = make_problem([5, 7], [0, 1], [4, 8], 16, 12, seed=1).to(torch.float32, kernel_device)
    with triton_kernels():  # registered, so the spy below replaces a live launcher
        pass
    calls = []
    launcher = _backend.kernels.segmented_shrink
    monkeypatch.setattr(
        _backend.kernels, "segmented_shrink", lambda *a, **k: calls.append(1) or launcher(*a, **k)
    )
    ref = lora_shrink(p.x, p.lora_a, p.seg_starts, p.seg_slot)
    assert calls == []
    with triton_kernels():
        got = lora_shrink(p.x, p.lora_a, p.seg_starts, p.seg_slot)
    assert calls == [1]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    lora_shrink(p.x, p.lora_a, p.seg_starts, p.seg_slot)
    assert calls == [1]


@pytest.mark.parametrize("enabled", [False, True], ids=["kernels-off", "kernels-on"])
def test_the_layer_follows_the_same_switch(kernel_device, monkeypatch, enabled):
    """MultiLoraLinear's choice (stacked ops vs its per-adapter torch loop) asks the same switch."""
    from rapidfire_core.lora import layer as layer_module

    used = []
    for name in ("multi_lora_add", "_add_segment_adapters_torch"):
        real = getattr(layer_module, name)
        monkeypatch.setattr(
            layer_module, name, lambda *a, _r=real, _n=name, **k: used.append(_n) or _r(*a, **k)
        )
    layer = MultiLoraLinear(torch.nn.Linear(16, 8).to(kernel_device))
    layer.add_adapter("a", r=4, lora_alpha=8)
    x = torch.randn(6, 16, device=kernel_device)
    with triton_kernels(enabled), lora_batch(LoraBatch([("a", 4), (None, 2)], kernel_device)):
        layer(x)
    assert used == ["multi_lora_add" if enabled else "_add_segment_adapters_torch"]


# ----------------------------------------------------------------------------- fake kernels


def _add(p, **changes):
    args = dict(
        y=p.y, x=p.x, lora_a=p.lora_a, lora_b=p.lora_b, scales=p.scales, seg_starts=p.seg_starts,
        seg_slot=p.seg_slot, keep=p.keep, drop_scale=p.drop_scale,
    )  # fmt: skip
    return args | changes


@pytest.mark.parametrize(
    "change,error",
    [
        (lambda p: {"lora_a": p.lora_a[:, :, :-1]}, "lora_a has shape"),
        (lambda p: {"lora_b": p.lora_b[:, :, :-1]}, "lora_b has shape"),
        (lambda p: {"x": p.x.half()}, "lora_a is torch.float32, expected torch.float16"),
        (lambda p: {"keep": p.keep[:-1]}, "keep has shape"),
    ],
    ids=["K-of-A", "R-of-B", "dtype", "keep-rows"],
)
def test_fake_kernels_reject_mismatches_under_torch_compile(change, error):
    torch._dynamo.reset()
    p = make_problem([5, 7], [0, 1], [4, 8], 16, 12, dropout=0.3, seed=2)
    compiled = torch.compile(multi_lora_add, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match=error):
        compiled(**_add(p, **change(p)))


def test_fake_kernels_trace_symbolic_shapes():
    """dynamic=True: the torch._check contracts hold on SymInts, and one graph serves two batch sizes."""
    torch._dynamo.reset()
    compiled = torch.compile(multi_lora_add, fullgraph=True, backend="aot_eager", dynamic=True)
    for lengths in ([5, 7], [9, 3]):
        p = make_problem(lengths, [0, 1], [4, 8], 16, 12, dropout=0.3, seed=3)
        torch.testing.assert_close(compiled(**_add(p)), multi_lora_add(**_add(p)), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- saved tensors


def _saved_by(fn) -> tuple[object, list[torch.Tensor]]:
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def _is_saved(t: torch.Tensor, saved: list[torch.Tensor]) -> bool:
    return any(s.data_ptr() == t.data_ptr() and s.shape == t.shape for s in saved)


@pytest.mark.parametrize("x_grad,a_grad", [(True, False), (False, True), (True, True)])
def test_shrink_saves_x_only_for_da_and_a_only_for_dx(x_grad, a_grad):
    p = make_problem([5, 0, 7], [0, -1, 1], [4, 8], 16, 12, dropout=0.3, seed=4)
    x = p.x.clone().requires_grad_(x_grad)
    a = p.lora_a.clone().requires_grad_(a_grad)
    s, saved = _saved_by(lambda: lora_shrink(x, a, p.seg_starts, p.seg_slot, p.keep, p.drop_scale))
    assert _is_saved(x, saved) == a_grad  # dA = dS^T drop(X)
    assert _is_saved(a, saved) == x_grad  # dX = (dS A) * mask
    assert _is_saved(p.keep, saved)  # both gradients re-apply the forward's mask
    g = torch.randn_like(s)
    inputs = [t for t, need in ((x, x_grad), (a, a_grad)) if need]
    got = torch.autograd.grad(s, inputs, g)
    x_all, a_all = p.x.clone().requires_grad_(), p.lora_a.clone().requires_grad_()
    want = torch.autograd.grad(
        lora_shrink(x_all, a_all, p.seg_starts, p.seg_slot, p.keep, p.drop_scale), [x_all, a_all], g
    )
    want = [w for w, need in zip(want, (x_grad, a_grad), strict=True) if need]
    for gt, wt in zip(got, want, strict=True):
        torch.testing.assert_close(gt, wt, rtol=0, atol=0)


@pytest.mark.parametrize("s_grad,b_grad", [(True, False), (False, True), (True, True)])
def test_expand_saves_s_only_for_db_and_b_only_for_ds(s_grad, b_grad):
    p = make_problem([5, 0, 7], [0, -1, 1], [4, 8], 16, 12, seed=5)
    y = p.y.clone().requires_grad_()
    s = torch.randn(p.x.shape[0], p.lora_a.shape[1]).requires_grad_(s_grad)
    b = p.lora_b.clone().requires_grad_(b_grad)
    out, saved = _saved_by(lambda: lora_expand(y, s, b, p.scales, p.seg_starts, p.seg_slot))
    assert not _is_saved(y, saved)  # dY = dOut
    assert _is_saved(s, saved) == b_grad  # dB = scale dOut^T S
    assert _is_saved(b, saved) == s_grad  # dS = scale dOut B
    inputs = [t for t, need in ((y, True), (s, s_grad), (b, b_grad)) if need]
    got = torch.autograd.grad(out, inputs, p.grad_out)
    s_all, b_all = s.detach().requires_grad_(), p.lora_b.clone().requires_grad_()
    want = torch.autograd.grad(
        lora_expand(p.y, s_all, b_all, p.scales, p.seg_starts, p.seg_slot), [s_all, b_all], p.grad_out
    )
    want = [p.grad_out] + [w for w, need in zip(want, (s_grad, b_grad), strict=True) if need]
    for gt, wt in zip(got, want, strict=True):
        torch.testing.assert_close(gt, wt, rtol=0, atol=0)
