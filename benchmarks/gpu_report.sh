#!/usr/bin/env bash
# The GPU work of issues 3 and 4 in a few commands: build rapidfire_core._C with CUDA, run every
# gpu-marked test of the kernels and the pool, compile-check the Triton kernels, run the kernel
# and state-swap benchmarks. Everything is logged, then packed into ONE file, $OUT/gpu_report.tgz
# (the device tool returns at most 8 files), with a summary on stdout.
#
#   bash benchmarks/gpu_report.sh                        # all steps (may exceed one 600 s call)
#   STEPS=build,tests,compile bash benchmarks/gpu_report.sh      # call 1
#   STEPS=build,bench_kernels,bench_swap bash benchmarks/gpu_report.sh   # call 2
#   BENCH_K='r16 and t512' STEPS=build,bench_kernels ...  # a subset of the kernel benchmark matrix
#   STEPS=bench_fused bash benchmarks/gpu_report.sh       # call 3: issue 11's fused vs sliced vs
#                                    sequential stock TRL on a 1B-class Llama (needs .whl/, below)
#
# The device image has torch, triton, transformers, peft, pybind11, cmake, ninja and pytest;
# this needs nothing else. (Engine-level GPU runs, bench_fused, additionally need the trl and
# datasets wheels and those of their dependencies the image lacks, carried in .whl/; they run
# without MLflow: trackers=[].) Every step runs even if one fails; the
# exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-benchmarks/out}
STEPS=${STEPS:-build,tests,compile,bench_kernels,bench_swap}
BENCH_K=${BENCH_K:-}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
PY=${PY:-python3}
# CUDA must be compiled in: a silent CPU-only build would turn the pool's GPU tests into skips.
export RAPIDFIRE_CUDA=${RAPIDFIRE_CUDA:-1}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
failed=0

wanted() { [[ ",$STEPS," == *",$1,"* ]]; }

step() {  # step NAME COMMAND...: run if wanted, log to $LOGS/NAME.log, count failures
  local name=$1; shift
  wanted "$name" || return 0
  echo "== $name: $*" | tee "$LOGS/$name.log"
  local start=$SECONDS
  "$@" >>"$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n 3 "$LOGS/$name.log"
  echo "== $name: rc=$rc in $((SECONDS - start)) s" | tee -a "$LOGS/$name.log"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  STEPS="$STEPS,wheels" step wheels "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi; git log -1 --format='commit %h %cs %s' 2>/dev/null; date -u; } >"$LOGS/machine.txt" 2>&1
# No tests may collect zero items quietly: pytest exits 5 then, which counts as a failure here.
step build bash -c "$PY setup.py build_ext --inplace && $PY -c 'import rapidfire_core._C as c, pprint; pprint.pprint(c.build_info())'"
step tests "$PY" -m pytest -m gpu -p no:cacheprovider -rA tests/ops tests/lora tests/memory tests/test_native_build.py
step compile "$PY" benchmarks/compile_check.py --jobs "$(nproc)"
step bench_kernels "$PY" -m pytest -m bench -p no:cacheprovider benchmarks/bench_multi_lora.py \
  ${BENCH_K:+-k "$BENCH_K"} --benchmark-only --benchmark-json "$LOGS/bench_multi_lora.json"
step bench_fused env OUT="$LOGS" "$PY" benchmarks/bench_fused_gpu.py
step bench_swap "$PY" -m pytest -m bench -p no:cacheprovider benchmarks/bench_state_swap.py \
  --benchmark-only --benchmark-json "$LOGS/bench_state_swap.json"
tar czf "$OUT/gpu_report.tgz" -C "$LOGS" .
echo "failed steps: $failed (steps: $STEPS; logs packed in $OUT/gpu_report.tgz)"
exit "$failed"
