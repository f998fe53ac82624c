#!/usr/bin/env bash
# One GPU check, as run on a lent GPU machine: build in place, run the whole test suite (the
# CUDA cases included) and the GPU benchmark. Logs go to $OUT (default ./gpu_logs).
# Optional: wheels in .whl/ (e.g. liger-kernel, to benchmark against it) are put on PYTHONPATH.
set -uo pipefail
OUT=${OUT:-gpu_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
{
  nvidia-smi
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -2
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
start=$(date +%s)
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
python3 -m sparsedistill | tee "$OUT/info.txt"
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest tests -q -rs 2>&1 | tee "$OUT/tests.log" | tail -40
timeout "${BENCH_TIMEOUT:-300}" python3 benchmarks/bench_distill.py --device cuda \
  --csv "$OUT/bench_distill.csv" --markdown "$OUT/bench_distill.md" 2>&1 | tee "$OUT/bench.log" | tail -40
