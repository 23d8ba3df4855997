"""Compile every multi-LoRA Triton kernel for a GPU target without a GPU (ahead-of-time).

``triton.compile`` lowers a kernel through TTIR -> TTGIR -> LLVM -> PTX -> cubin (ptxas)
for any ``GPUTarget``; no driver is needed. This catches what the interpreter cannot:
type errors in loop-carried values, unsupported ops, dot shapes below 16, register or
shared-memory overflow for the block sizes the launchers pick on a GPU.

Run as ``python -m rapidfire_core.ops.compile_check [--quick]`` (must run with
``TRITON_INTERPRET`` unset: the interpreter replaces ``@triton.jit`` functions).
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass

TORCH_TO_TRITON = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


@dataclass(frozen=True)
class KernelVariant:
    kernel: str  # key of _kernels.KERNELS
    dtype: str  # triton type name of the activations/weights: fp16, bf16, fp32
    constexprs: tuple[tuple[str, object], ...]
    out_dtype: str | None = None  # None: same as dtype

    @property
    def label(self) -> str:
        flags = ",".join(f"{k}={v}" for k, v in self.constexprs)
        return f"{self.kernel}[{self.dtype}->{self.out_dtype or self.dtype}]({flags})"


def _pointer_type(name: str, variant: KernelVariant) -> str:
    if name == "keep_ptr":
        return "*u8"
    if name.startswith("seg_"):
        return "*i32"
    if name in ("drop_scale_ptr", "out_scale_ptr"):
        return "*fp32"
    if name == "out_ptr":
        return "*" + (variant.out_dtype or variant.dtype)
    return "*" + variant.dtype


def gpu_variants(full: bool = True) -> list[KernelVariant]:
    """The block sizes and flags the launchers use on a GPU (see _kernels), per dtype.

    ``full=False`` keeps one variant per (kernel, dtype): the test suite's quick check
    (every kernel, every dtype, both dropout paths: ~15 s instead of ~60 s on 2 cores).
    """
    if not full:
        picked: dict[tuple[str, str], KernelVariant] = {}
        for v in gpu_variants(full=True):
            dropout = dict(v.constexprs)["HAS_DROPOUT"]
            # bf16/fp32 with dropout, fp16 without; the smallest blocks of fp32 (ieee dots compile slowly).
            if dropout == (v.dtype != "fp16") and (v.kernel, v.dtype) not in picked:
                picked[(v.kernel, v.dtype)] = v
        return list(picked.values())
    variants = []
    for dtype, dropout in itertools.product(("fp16", "bf16", "fp32"), (False, True)):
        precision = "ieee" if dtype == "fp32" else "tf32"
        for block_m, block_r in ((64, 16), (16, 64), (32, 128)):
            variants.append(KernelVariant("narrow", dtype, (
                ("HAS_DROPOUT", dropout), ("HAS_OUT_SCALE", not dropout), ("DOT_PRECISION", precision),
                ("BLOCK_M", block_m), ("BLOCK_R", block_r), ("BLOCK_K", 128 if block_r <= 32 else 64),
            )))  # fmt: skip
        for has_y, block_m in ((True, 64), (False, 16)):
            variants.append(KernelVariant("wide", dtype, (
                ("HAS_Y", has_y), ("HAS_DROPOUT", dropout), ("HAS_OUT_SCALE", has_y),
                ("DOT_PRECISION", precision),
                ("BLOCK_M", block_m), ("BLOCK_N", 128), ("BLOCK_R", 64),
            )))  # fmt: skip
        for block_p, block_q, out in ((128, 16, None), (64, 128, "fp32")):  # dB (N x r), dA split (r x K)
            variants.append(KernelVariant("wgrad", dtype, (
                ("HAS_DROPOUT", dropout), ("HAS_OUT_SCALE", not dropout), ("DOT_PRECISION", precision),
                ("BLOCK_M", 64), ("BLOCK_P", block_p), ("BLOCK_Q", block_q),
            ), out_dtype=out))  # fmt: skip
    return variants


def compile_variant(variant: KernelVariant, target=None, num_warps: int = 4, num_stages: int = 3):
    """Compile one variant for ``target`` (default sm_90); returns the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import _kernels

    if _kernels.INTERPRETED:
        raise RuntimeError(
            "compile_check needs TRITON_INTERPRET unset (the interpreter replaces @triton.jit)"
        )
    fn = _kernels.KERNELS[variant.kernel]
    constexprs = dict(variant.constexprs)
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = _pointer_type(name, variant)
        else:
            signature[name] = "i32"
    src = ASTSource(fn, signature=signature, constexprs=constexprs)
    target = target or GPUTarget("cuda", 90, 32)
    return triton.compile(src, target=target, options={"num_warps": num_warps, "num_stages": num_stages})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    variants = gpu_variants(full="--quick" not in argv)
    failures = 0
    for variant in variants:
        t0 = time.perf_counter()
        try:
            compiled = compile_variant(variant)
            meta = compiled.metadata
            print(
                f"ok   {variant.label}: cubin {len(compiled.asm['cubin'])} B, shared {meta.shared} B, "
                f"{time.perf_counter() - t0:.1f}s"
            )
        except Exception as exc:  # noqa: BLE001 - report every failure, not only the first
            failures += 1
            print(f"FAIL {variant.label}: {type(exc).__name__}: {exc}")
    print(f"{len(variants) - failures}/{len(variants)} kernel variants compiled for sm_90")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
