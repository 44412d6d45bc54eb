#!/usr/bin/env bash
# One GPU run of the delta-rule kernel and the cuda runtime: their GPU tests (pytest-xdist workers: compiling
# dominates), then benchmarks/delta_kernels.py; logs and results under OUT.
#   OUT=/tmp/out [TESTS=1] [GATED=0] [PROBE=0] [BENCH=1] [WORKERS=8] [TESTS_K=expr] bash benchmarks/gpu_delta_run.sh
# Works from a source tree without installing seqedge (its package mapping is made with symlinks);
# flash-linear-attention wheels in .whl/ are installed to a private path when present.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:?set OUT to a folder for logs and results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    pip install -q --no-deps --target /tmp/seqedge-site .whl/*.whl >/dev/null 2>&1
    export PYTHONPATH=/tmp/seqedge-site:$PWD
else
    export PYTHONPATH=$PWD
fi
for pkg in kernels runtimes export; do [ -e "seqedge/$pkg" ] || ln -s "../$pkg" "seqedge/$pkg"; done
{
    date -u '+%Y-%m-%d %H:%M:%S UTC'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python - <<'PY'
import importlib, torch, triton
fla = importlib.util.find_spec("fla") and importlib.import_module("fla").__version__
print(f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, fla {fla or 'not installed'}")
PY
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ "${TESTS:-1}" = "1" ]; then
    # fla's comparisons start their own processes (tests/delta_fla_check.py), so they share the workers;
    # GATED=1 adds the gated kernels' and fused decoders' GPU tests
    timeout "${TEST_TIMEOUT:-300}" python -m pytest -q -rfEs -p no:cacheprovider -n "${WORKERS:-8}" \
        ${TESTS_K:+-k "$TESTS_K"} tests/test_kernels_delta_gpu.py tests/test_cuda_runtime.py \
        $([ "${GATED:-0}" = "1" ] && echo tests/test_kernels_gpu.py) > "$OUT/tests.log" 2>&1
    echo "pytest exit code: $?" >> "$OUT/tests.log"
    tail -n 25 "$OUT/tests.log"
fi
if [ "${PROBE:-0}" = "1" ]; then
    timeout "${PROBE_TIMEOUT:-200}" python -P benchmarks/probes/delta_fla_crash.py > "$OUT/probe.log" 2>&1
    echo "probe exit code: $?" >> "$OUT/probe.log"
    cut -c1-400 "$OUT/probe.log"
fi
if [ "${BENCH:-1}" = "1" ]; then
    timeout "${BENCH_TIMEOUT:-300}" python benchmarks/delta_kernels.py --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -n 30
fi
