"""Compile the multi-LoRA Triton kernels for sm_90 without a GPU, exactly as the ops launch them.

The kernel variants are not listed by hand (a hand list drifts from the launchers). The ops'
own Triton paths (`lora_shrink`, `lora_expand` and their backwards) run on meta tensors of the
benchmark shapes (`linear_shapes`) while the kernels are replaced by recorders and the GPU is
taken to have an H100's 132 SMs, so the launchers pick the block sizes and splits they pick on
one. Each recorded launch keeps what Triton's JIT specializes a kernel on at run time:

    constexprs                    BLOCK_*, HAS_*, DOT_PRECISION
    int arguments equal to 1      compiled in as constants (unit strides: vector loads)
    multiples of 16               `tt.divisibility` hints on pointers (16-byte aligned) and ints

Distinct launches are compiled with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``
(TTIR -> TTGIR -> LLVM -> PTX -> cubin through ptxas; no driver needed). This catches what the
interpreter cannot: type errors in loop-carried values, unsupported ops, dot shapes below 16,
shared memory beyond the 227 KiB an H100 block may use, and, from the cubin's resource usage
(``cuobjdump -res-usage``), registers and local-memory spills.

    python benchmarks/compile_check.py            # every distinct launch (GPU report)
    python benchmarks/compile_check.py --quick    # the largest blocks per kernel/dtype
    ... --jobs N                                  # compile in N processes

Must run with ``TRITON_INTERPRET`` unset (the interpreter replaces ``@triton.jit``). A dev tool,
not part of the installed package: it imports the checkout's ``rapidfire_core``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks, rapidfire_core
from benchmarks.linear_shapes import LORA_LINEAR_SHAPES  # noqa: E402
from rapidfire_core.ops import _kernels  # noqa: E402
from rapidfire_core.ops.lora_expand import _expand_backward_triton, _expand_triton  # noqa: E402
from rapidfire_core.ops.lora_shrink import _shrink_backward_triton, _shrink_triton  # noqa: E402

H100_SMS = 132
SM90_SHARED_LIMIT = 227 * 1024  # bytes of shared memory one block may opt in to on sm_90

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
ADAPTERS = (1, 4, 8, 16)  # 16 x 2048 rows: the only batches where shrink picks 64-row tiles
RANKS = (1, 8, 16, 64, 128)  # stack rank = the largest adapter rank in the batch
TOKENS = (512, 2048)  # rows per adapter


@dataclass(frozen=True)
class Launch:
    """One kernel specialization as Triton's JIT would compile it."""

    kernel: str  # key of _kernels.KERNELS
    signature: tuple[tuple[str, str], ...]  # (argument, Triton type or "constexpr") in order
    constexprs: tuple[tuple[str, object], ...]
    divisible: tuple[str, ...]  # arguments with a divisibility-by-16 hint
    num_warps: int
    num_stages: int

    @property
    def dtype(self) -> str:
        return dict(self.signature)[_FIRST_OPERAND[self.kernel]].lstrip("*")

    @property
    def label(self) -> str:
        flags = ",".join(f"{k}={v}" for k, v in self.constexprs if not k.startswith("stride"))
        units = ",".join(k for k, v in self.constexprs if k.startswith("stride") and v == 1)
        return f"{self.kernel}[{self.dtype}]({flags}; unit:{units or '-'}; warps={self.num_warps})"

    def block_area(self) -> int:
        blocks = [v for k, v in self.constexprs if k.startswith("BLOCK_")]
        area = 1
        for b in blocks:
            area *= int(b)
        return area


_FIRST_OPERAND = {"shrink": "in_ptr", "expand": "in_ptr", "wgrad": "left_ptr"}


# ---------------------------------------------------------------------------------- recording


class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records a Launch."""

    def __init__(self, name: str, fn, sink: list[Launch]) -> None:
        self.name, self.fn, self.sink = name, fn, sink

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, num_warps: int, num_stages: int, **kwargs) -> None:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend

        values = dict(zip(self.fn.arg_names, args, strict=False)) | kwargs
        signature, constexprs, divisible = [], [], []
        for param in self.fn.params:
            value = values[param.name]
            if param.is_constexpr:
                kind, hint = "constexpr", None
            else:
                kind, hint = native_specialize_impl(BaseBackend, value, False, True, True)
            if kind == "constexpr":
                constexprs.append((param.name, value))
            elif hint == "D":
                divisible.append(param.name)
            signature.append((param.name, kind))
        self.sink.append(
            Launch(self.name, tuple(signature), tuple(constexprs), tuple(divisible), num_warps, num_stages)
        )


@contextlib.contextmanager
def _recording(sink: list[Launch]) -> Iterator[None]:
    saved = {name: getattr(_kernels, attr) for name, attr in _KERNEL_ATTRS.items()}
    sm_count = _kernels._sm_count
    try:
        for name, attr in _KERNEL_ATTRS.items():
            setattr(_kernels, attr, _Recorder(name, _kernels.KERNELS[name], sink))
        _kernels._sm_count = lambda t: H100_SMS
        yield
    finally:
        for name, attr in _KERNEL_ATTRS.items():
            setattr(_kernels, attr, saved[name])
        _kernels._sm_count = sm_count


_KERNEL_ATTRS = {"shrink": "_shrink_kernel", "expand": "_expand_kernel", "wgrad": "_wgrad_kernel"}


def _run_layer_ops(k: int, n: int, adapters: int, rank: int, tokens: int, dtype, dropout: bool) -> None:
    """One training step's kernel calls of a MultiLoraLinear (forward + backward), on meta tensors."""
    meta = {"device": "meta"}
    m = adapters * tokens
    x = torch.empty((m, k), dtype=dtype, **meta)  # (M, K)
    y = torch.empty((m, n), dtype=dtype, **meta)  # (M, N)
    lora_a = torch.empty((adapters, rank, k), dtype=dtype, **meta)  # (n, R, K)
    lora_b = torch.empty((adapters, n, rank), dtype=dtype, **meta)  # (n, N, R)
    scales = torch.empty((adapters,), dtype=torch.float32, **meta)
    seg_starts = torch.empty((adapters + 1,), dtype=torch.int32, **meta)
    seg_slot = torch.empty((adapters,), dtype=torch.int32, **meta)
    keep = torch.empty((m, k), dtype=torch.bool, **meta) if dropout else None
    drop_scale = torch.empty((adapters,), dtype=torch.float32, **meta) if dropout else None

    s = _shrink_triton(x, lora_a, seg_starts, seg_slot, keep, drop_scale)
    _expand_triton(y, s, lora_b, scales, seg_starts, seg_slot)
    grad_s, _ = _expand_backward_triton(y, s, lora_b, scales, seg_starts, seg_slot)  # y stands in for dOut
    _shrink_backward_triton(grad_s, x, lora_a, seg_starts, seg_slot, keep, drop_scale, adapters)


def record_launches(full: bool = True) -> list[Launch]:
    """Distinct launches of the ops over the benchmark shapes, every dtype, dropout on and off,
    ranks {1, 8, 16, 64, 128}, 1/4/8/16 adapters and 512/2048 rows each (first seen first).

    ``full=False``: per (kernel, dtype), the launch with the largest blocks (the most registers
    and shared memory), so every kernel and dtype compiles once (the CI check)."""
    if _kernels.INTERPRETED:
        raise RuntimeError(
            "compile_check needs TRITON_INTERPRET unset (the interpreter replaces @triton.jit)"
        )
    sink: list[Launch] = []
    shapes = sorted(set(LORA_LINEAR_SHAPES.values()))
    with _recording(sink):
        for (k, n), adapters, rank, tokens, dtype, dropout in itertools.product(
            shapes, ADAPTERS, RANKS, TOKENS, DTYPES, (False, True)
        ):
            _run_layer_ops(k, n, adapters, rank, tokens, dtype, dropout)
    launches = list(dict.fromkeys(sink))
    if full:
        return launches
    largest: dict[tuple[str, str], Launch] = {}
    for launch in launches:
        key = (launch.kernel, launch.dtype)
        if key not in largest or launch.block_area() > largest[key].block_area():
            largest[key] = launch
    return list(largest.values())


# ---------------------------------------------------------------------------------- compiling


def compile_launch(launch: Launch, target=None):
    """Compile one launch for ``target`` (default sm_90); returns Triton's CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _kernels.KERNELS[launch.kernel]
    index = {name: i for i, name in enumerate(fn.arg_names)}
    attrs = {(index[name],): [["tt.divisibility", 16]] for name in launch.divisible}
    src = ASTSource(fn, signature=dict(launch.signature), constexprs=dict(launch.constexprs), attrs=attrs)
    target = target or GPUTarget("cuda", 90, 32)
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    return triton.compile(src, target=target, options=options)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers per thread, local and stack memory per thread (spills: a Triton kernel makes no
    calls, so any is an accumulator or operand that did not fit in registers) and static shared
    bytes of a cubin's kernel, from ``cuobjdump -res-usage`` (bundled with Triton); {} when the
    tool is unavailable."""
    from triton import knobs

    tool = knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            text = subprocess.run(
                [tool, "-res-usage", f.name], capture_output=True, text=True, check=True
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            return {}
    found = {key: re.search(rf"\b{key}:(\d+)", text) for key in ("REG", "LOCAL", "SHARED", "STACK")}
    return {key.lower(): int(m.group(1)) for key, m in found.items() if m}


def check_launch(launch: Launch) -> dict:
    """Compile one launch and report: ok, label, seconds, registers, local (spill) bytes, shared
    bytes (Triton's dynamic shared memory), error."""
    start = time.perf_counter()
    try:
        compiled = compile_launch(launch)
    except Exception as exc:  # noqa: BLE001 - reported per launch, the run goes on
        return {"ok": False, "label": launch.label, "error": f"{type(exc).__name__}: {exc}"}
    usage = resource_usage(compiled.asm["cubin"])
    shared = compiled.metadata.shared
    report = {
        "ok": shared <= SM90_SHARED_LIMIT,
        "label": launch.label,
        "seconds": time.perf_counter() - start,
        "shared": shared,
        "registers": usage.get("reg"),
        "spill_bytes": usage.get("local", 0) + usage.get("stack", 0) if usage else None,
    }
    if not report["ok"]:
        report["error"] = f"needs {shared} B of shared memory; sm_90 allows {SM90_SHARED_LIMIT}"
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    jobs = int(argv[argv.index("--jobs") + 1]) if "--jobs" in argv else 1
    launches = record_launches(full="--quick" not in argv)
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            reports = list(pool.map(check_launch, launches))
    else:
        reports = [check_launch(launch) for launch in launches]
    failures = spilling = 0
    for r in reports:
        if not r["ok"]:
            failures += 1
            print(f"FAIL {r['label']}: {r['error']}")
            continue
        spilling += bool(r["spill_bytes"])
        print(
            f"ok   {r['label']}: {r['registers']} regs, {r['spill_bytes']} B spilled, "
            f"{r['shared']} B shared, {r['seconds']:.1f}s"
        )
    print(f"{len(reports) - failures}/{len(reports)} kernel launches compiled for sm_90 ({spilling} spill)")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.exit(main(sys.argv[1:]))
