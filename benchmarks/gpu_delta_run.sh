#!/usr/bin/env bash
# One GPU run of the delta-rule kernel and the cuda runtime: their GPU tests (pytest-xdist workers: compiling
# dominates), then benchmarks/delta_kernels.py; logs and results under OUT.
#   OUT=/tmp/out [TESTS=1] [PROBE=0] [GATED=0] [IMPORTS=0] [CONFIGS=0] [BENCH=1] [WORKERS=8] [TESTS_K=expr] \
#       bash benchmarks/gpu_delta_run.sh
# CONFIGS=1 times the whole backward under each launch the op picks among and each pending candidate, per key and
# per head (benchmarks/probes/delta_bwd_profile.py --configs-only, into OUT/configs_per_{key,head}/), before
# the benchmark; CONFIGS_GATES="head" (or "key") times one gate kind only.
# FWD_CONFIGS=1 times the whole forward under each pending candidate and the configs it would compete with, beside
# fla's (benchmarks/probes/delta_fwd_profile.py --configs, into OUT/fwd_configs/); FWD_CONFIGS_ARGS="--per-head"
# (or "--per-key") times one gate kind only, "--every" every config the op picks among.
# AB_PREP=FILE times the prep against FILE, a copy of kernels/delta_prep_triton.py from another commit
# (benchmarks/probes/delta_prep_ab.py, AB_PREP_ARGS passed on, into OUT/delta_prep_ab.json).
# NCU=1 profiles the per-head backward, ours and fla's, under Nsight Compute (benchmarks/probes/delta_bwd_ncu.py:
# CSVs into OUT, the summary printed), after the tests; NCU_ARGS="--pass fwd [--per-key]" the forward instead.
# PROBE=1 (with TESTS=1) runs benchmarks/probes/delta_fla_crash.py beside the tests; BENCH_ARGS go to the
# benchmark (e.g. "--who ours --rows fwdbwd peak_fwdbwd": our backward's rows without fla's minutes of compiling).
# WORKERS is per suite, and each worker process holds 1-6.5 GiB of the card: keep all suites' workers together
# under the card's GiB / 6 (an 80 GB card with GATED=1 and IMPORTS=1: WORKERS=4).
# IMPORTS=1 (with TESTS=1) runs, beside them, the imports against fla's own models on the card
# (tests/test_import_{gla,gdn,kda}.py -k on_gpu; they need the transformers and fla wheels in .whl/).
# Works from a source tree without installing seqedge (its package mapping is made with symlinks); wheels in .whl/
# are installed to a private path when present. Make them here (the device has torch and triton, not these):
#   pip download --no-deps -d .whl flash-linear-attention==0.6.0 fla-core==0.6.0 transformers==5.23.0 \
#       pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl pydantic_core==2.50.5
# (pydantic: seqedge.artifact's manifest schema, which every runtime test imports.)
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
    # -v: every test's verdict is in the log as it finishes, even when the time box ends the run. fla's
    # comparisons start their own processes (tests/delta_fla_check.py). GATED=1 runs the gated kernels' and fused
    # decoders' GPU tests beside them, in a second pytest with its own workers.
    run_tests() {  # log, files...
        local log=$1; shift
        timeout "${TEST_TIMEOUT:-300}" python -m pytest -v --tb=short -rfEs -p no:cacheprovider \
            -n "${WORKERS:-8}" ${TESTS_K:+-k "$TESTS_K"} "$@" > "$log" 2>&1
        echo "pytest exit code: $?" >> "$log"
    }
    # beside them: which launch, if any, fails at the shape of fla's comparison (each in its own process)
    [ "${PROBE:-0}" = "1" ] && (timeout $((${PROBE_TIMEOUT:-80} + 20)) python -P benchmarks/probes/delta_fla_crash.py \
        --no-fla-calls --timeout="${PROBE_TIMEOUT:-80}" > "$OUT/probe.log" 2>&1; echo "probe exit code: $?" \
        >> "$OUT/probe.log") &
    run_tests "$OUT/tests.log" tests/test_kernels_delta_gpu.py tests/test_cuda_runtime.py &
    [ "${GATED:-0}" = "1" ] && run_tests "$OUT/tests_gated.log" tests/test_kernels_gpu.py &
    [ "${IMPORTS:-0}" = "1" ] && TESTS_K=on_gpu WORKERS=3 run_tests "$OUT/tests_imports.log" \
        tests/test_import_gla.py tests/test_import_gdn.py tests/test_import_kda.py &
    wait
    for log in "$OUT"/tests*.log; do
        echo "== $log: $(grep -c ' PASSED' "$log") passed, $(grep -c ' FAILED' "$log") failed, $(grep -c ' SKIPPED' "$log") skipped"
        grep -E ' FAILED|^FAILED|^ERROR|exit code|passed|failed' "$log" | tail -n 15 | cut -c1-300
    done
    [ -f "$OUT/probe.log" ] && cut -c1-300 "$OUT/probe.log"
fi
if [ "${NCU:-0}" = "1" ]; then
    timeout "${NCU_TIMEOUT:-300}" python -P benchmarks/probes/delta_bwd_ncu.py --profile "$OUT" ${NCU_ARGS:-} \
        > "$OUT/ncu.log" 2>&1
    echo "ncu exit code: $?" >> "$OUT/ncu.log"
    tail -n 60 "$OUT/ncu.log" | cut -c1-400
fi
if [ "${CONFIGS:-0}" = "1" ]; then
    for gates in ${CONFIGS_GATES:-key head}; do
        flag=$([ "$gates" = head ] && echo --per-head)
        timeout "${CONFIGS_TIMEOUT:-150}" python -P benchmarks/probes/delta_bwd_profile.py --configs-only $flag \
            --out "$OUT/configs_per_$gates" 2>&1 | grep "'backward'" | cut -c1-400
    done
fi
if [ "${FWD_CONFIGS:-0}" = "1" ]; then
    timeout "${FWD_CONFIGS_TIMEOUT:-200}" python -P benchmarks/probes/delta_fwd_profile.py --configs \
        --out "$OUT/fwd_configs" ${FWD_CONFIGS_ARGS:-} 2>&1 | grep "'config'" | cut -c1-400
fi
if [ -n "${AB_PREP:-}" ]; then     # a copy of kernels/delta_prep_triton.py to time the prep against
    timeout "${AB_PREP_TIMEOUT:-150}" python -P benchmarks/probes/delta_prep_ab.py --baseline "$AB_PREP" \
        --out "$OUT" ${AB_PREP_ARGS:-} 2>&1 | cut -c1-500
fi
if [ "${BENCH:-1}" = "1" ]; then
    timeout "${BENCH_TIMEOUT:-300}" python benchmarks/delta_kernels.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -n 30
fi
