#!/usr/bin/env bash
# One GPU run of the kernels: tests (parallel pytest shards: compiling dominates), the launch-parameter
# sweep, and the kernel benchmark; logs and results under OUT.
#   OUT=/tmp/out [TESTS=1] [SHARDS=8] [TESTS_K=expr] [TUNE=0] [BENCH=1] [DEADLINE=s] bash benchmarks/gpu_kernels_run.sh [args for benchmarks/kernels.py]
# DEADLINE (seconds since the script started): the benchmark's time box is whatever the tests left of it.
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
    # Compiling dominates (every config x dtype x head dims x length divisibility is a fresh Triton compile):
    # the collected tests are dealt round-robin to SHARDS parallel pytest processes. TESTS_K narrows them (-k).
    python -m pytest tests/test_kernels_gpu.py -q --collect-only -p no:cacheprovider ${TESTS_K:+-k "$TESTS_K"} \
        | grep '::' > /tmp/test_ids.txt
    n=${SHARDS:-8}
    set -f       # test ids hold [...]: no globbing
    for i in $(seq 0 $((n - 1))); do
        awk -v n="$n" -v i="$i" 'NR % n == i' /tmp/test_ids.txt > "/tmp/test_ids_$i.txt"
        (timeout "${TEST_TIMEOUT:-300}" python -m pytest -q -rA -p no:cacheprovider $(cat "/tmp/test_ids_$i.txt") \
            > "/tmp/tests_$i.log" 2>&1; echo "pytest shard $i of $n exit code: $?" >> "/tmp/tests_$i.log") &
    done
    wait
    set +f
    for i in $(seq 0 $((n - 1))); do cat "/tmp/tests_$i.log"; done > "$OUT/tests.log"
    echo "$(wc -l < /tmp/test_ids.txt) tests collected"
    grep -E "passed|failed|exit code" "$OUT/tests.log"
fi
if [ "${TUNE:-0}" = "1" ]; then
    timeout "${TUNE_TIMEOUT:-240}" python benchmarks/probes/kernels_tune.py --out "$OUT" > "$OUT/tune.log" 2>&1
    echo "tune exit code: $?" >> "$OUT/tune.log"
    cat "$OUT/tune.log" | cut -c1-260
fi
if [ "${BENCH:-1}" = "1" ]; then
    bench_box=${BENCH_TIMEOUT:-$(( ${DEADLINE:-${SECONDS}+300} - SECONDS ))}
    echo "benchmark time box: ${bench_box} s"
    timeout "$bench_box" python benchmarks/kernels.py --out "$OUT" "$@" > "$OUT/bench.log" 2>&1
    echo "benchmark exit code: $?" >> "$OUT/bench.log"
    tail -40 "$OUT/bench.log"
fi
