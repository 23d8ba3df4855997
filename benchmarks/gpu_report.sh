#!/usr/bin/env bash
# One command for a GPU session (issues 3 and 4): build rapidfire_core._C with CUDA, run every
# gpu-marked test of the kernels and the pool, compile-check the Triton kernels, run the kernel
# and state-swap benchmarks, and leave logs + JSON under $OUT (default benchmarks/out).
#
#   bash benchmarks/gpu_report.sh            # from the repository root, on the GPU machine
#
# The device image has torch, triton, transformers, peft, pybind11, cmake, ninja and pytest;
# this needs nothing else. (Engine-level GPU runs additionally need trl, datasets and mlflow
# wheels carried in .whl/: see benchmarks/RESULTS.md.) Every step runs even if one fails; the
# exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
failed=0

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, count failures
  local name=$1; shift
  echo "== $name: $*" | tee "$OUT/$name.log"
  local start=$SECONDS
  "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  step wheels "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi; git log -1 --format='commit %h %cs %s' 2>/dev/null; date -u; } >"$OUT/machine.txt" 2>&1
# No tests may collect zero items quietly: pytest exits 5 then, which counts as a failure here.
step build "$PY" setup.py build_ext --inplace
step build_info "$PY" -c "import rapidfire_core._C as c, pprint; pprint.pprint(c.build_info())"
step gpu_tests "$PY" -m pytest -m gpu -p no:cacheprovider -rA tests/ops tests/lora tests/memory tests/test_native_build.py
step compile_check "$PY" -m rapidfire_core.ops.compile_check
step bench_kernels "$PY" -m pytest -m bench -p no:cacheprovider benchmarks/bench_multi_lora.py \
  --benchmark-only --benchmark-json "$OUT/bench_multi_lora.json"
step bench_swap "$PY" -m pytest -m bench -p no:cacheprovider benchmarks/bench_state_swap.py \
  --benchmark-only --benchmark-json "$OUT/bench_state_swap.json"
echo "failed steps: $failed (logs in $OUT)"
exit "$failed"
