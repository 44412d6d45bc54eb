#!/usr/bin/env bash
# One GPU run for issue 5: kernel tests (three pytest shards in parallel: compiling dominates), the launch-parameter
# sweep, and the kernel benchmark; logs and results under OUT.
#   OUT=/tmp/out [TESTS=1] [SHARDS='forward backward other'] [TUNE=0] [BENCH=1] bash benchmarks/gpu_kernels_run.sh [args for benchmarks/kernels.py]
# Works from a source tree without installing seqedge (the package mapping seqedge.kernels -> kernels/ is made
# with a symlink); flash-linear-attention wheels in .whl/ are installed to a private path when present.
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
[ -e seqedge/kernels ] || ln -s ../kernels seqedge/kernels
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
    shard() {   # name, -k expression
        timeout "${TEST_TIMEOUT:-300}" python -m pytest tests/test_kernels_gpu.py -q -rA -p no:cacheprovider -k "$2" \
            > "/tmp/tests_$1.log" 2>&1
        echo "pytest ($1: -k '$2') exit code: $?" >> "/tmp/tests_$1.log"
    }
    declare -A expr=([forward]="forward" [backward]="backward" [other]="not forward and not backward")
    for name in ${SHARDS:-forward backward other}; do shard "$name" "${expr[$name]}" & done
    wait
    for name in ${SHARDS:-forward backward other}; do cat "/tmp/tests_$name.log"; done > "$OUT/tests.log"
    grep -E "passed|failed|exit code" "$OUT/tests.log"
fi
if [ "${TUNE:-0}" = "1" ]; then
    timeout "${TUNE_TIMEOUT:-240}" python benchmarks/kernels_tune.py --out "$OUT" > "$OUT/tune.log" 2>&1
    echo "tune exit code: $?" >> "$OUT/tune.log"
    cat "$OUT/tune.log" | cut -c1-260
fi
if [ "${BENCH:-1}" = "1" ]; then
    timeout "${BENCH_TIMEOUT:-300}" python benchmarks/kernels.py --out "$OUT" "$@" > "$OUT/bench.log" 2>&1
    echo "benchmark exit code: $?" >> "$OUT/bench.log"
    tail -40 "$OUT/bench.log"
fi
