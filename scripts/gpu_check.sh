#!/usr/bin/env bash
# The GPU check, for a machine with a GPU, PyTorch (CUDA) and nvcc, and no internet. Within
# 8 minutes in all (TOTAL_S, default 470; each step has its own timeout, and the benchmarks get
# what is left, as a time budget that they end within and still write their results): build the
# extension in place, run the CUDA cases of the test suite (pytest -k cuda: the CPU cases are
# CI's), the CUDA test files under compute-sanitizer's memcheck when
# it is on PATH (minus the >2**31-element and opcheck cases: memcheck slows kernels 10-100x),
# and the GPU benchmarks in full. Everything it writes goes to $OUT (default:
# benchmarks/results/gpu_<timestamp>): env.txt, build.log, info.txt, tests.log, memcheck.log,
# bench.log, and the suite's CSV, JSON, markdown and plots.
# Liger-Kernel (a peer of the distillation benchmark): if it is not importable and .whl/ holds
# its wheel, it is installed offline into /tmp/site.
#   bash scripts/gpu_check.sh            # BUILD_TIMEOUT, TEST_TIMEOUT, MEMCHECK_TIMEOUT,
#                                        # BENCH_TIMEOUT (seconds) override the step limits;
#                                        # PACK=1 leaves one gpu_check.tar.gz in $OUT
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
TOTAL_S=${TOTAL_S:-470}
elapsed() { echo "$(( $(date +%s) - start )) s"; }
left() { echo $(( TOTAL_S - ($(date +%s) - start) )); }
cap() { local l; l=$(left); echo $(( $1 < l ? $1 : (l > 1 ? l : 1) )); }  # min(limit, time left)
status=0

{
  nvidia-smi
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -2
  command -v compute-sanitizer || echo "compute-sanitizer: not on PATH"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if ! python3 -c "import liger_kernel" 2>/dev/null && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c "import liger_kernel; print('liger_kernel', getattr(liger_kernel, '__version__', 'installed'))" \
  2>/dev/null || echo "liger_kernel: not installed (its benchmark rows are skipped)"

echo "== build ($(elapsed))"
timeout "$(cap "${BUILD_TIMEOUT:-150}")" python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
  || { tail -60 "$OUT/build.log"; echo "build failed"; exit 1; }
python3 -m sparsedistill | tee "$OUT/info.txt"

echo "== tests ($(elapsed))"
timeout "$(cap "${TEST_TIMEOUT:-120}")" python3 -m pytest tests -q -rs -k cuda -p no:cacheprovider > "$OUT/tests.log" 2>&1 \
  || status=1
tail -15 "$OUT/tests.log"

echo "== memcheck of the CUDA tests ($(elapsed))"
if command -v compute-sanitizer > /dev/null; then
  timeout "$(cap "${MEMCHECK_TIMEOUT:-60}")" compute-sanitizer --tool memcheck --leak-check no \
    --error-exitcode 3 --target-processes all \
    python3 -m pytest tests/distill/test_distill_cuda.py tests/prune/test_select_cuda.py tests/prune/test_nm_mask.py tests/sparse/test_sparse_linear_cuda.py \
      -q -x -p no:cacheprovider -k "not 2_pow_31 and not 262144 and not opcheck" > "$OUT/memcheck.log" 2>&1
  rc=$?
  tail -15 "$OUT/memcheck.log"
  case $rc in 0) ;; 124) echo "memcheck: stopped at its time limit (partial run; see memcheck.log)";;
              *) echo "memcheck: exit status $rc"; status=1;; esac
else
  echo "compute-sanitizer is not on PATH: memcheck skipped" | tee "$OUT/memcheck.log"
fi

echo "== benchmarks, full, on the GPU ($(elapsed))"
bench_s=$(cap "${BENCH_TIMEOUT:-600}")
timeout "$bench_s" python3 -m benchmarks --full --device cuda --out "$OUT" --no-progress \
  --time-budget $(( bench_s > 40 ? bench_s - 25 : bench_s / 2 )) > "$OUT/bench.log" 2>&1 || status=1
tail -80 "$OUT/bench.log"
if [ "${PACK:-0}" = 1 ]; then  # one file instead of a dozen (for transfers that limit the count)
  (cd "$OUT" && tar -czf ../gpu_check.tar.gz . && rm -f -- * && mv ../gpu_check.tar.gz .)
fi
echo "== done in $(elapsed), status $status; logs and results in $OUT"
exit $status
