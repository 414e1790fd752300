#!/usr/bin/env bash
# The whole GPU session in ONE call of at most 8 minutes (see bench/gpu/README.md): build the kernel library for
# this GPU, run its host tests, probe compute-sanitizer and run the quick check under memcheck and racecheck, run
# the correctness + timing check of every DW layer (ours vs cuDNN vs the memory floor), and, when the wheels of
# .whl/ are there, time `deprune-onnx bench` on a pruned sample MobileNetV2. Results: at most 8 files in $OUT (the
# device tool's folder) or, without $OUT, in bench/results/gpu_run_<date>/.
#
#   bash bench/gpu/run_all.sh                   # check sanitize bench (bench needs .whl/, see below)
#   bash bench/gpu/run_all.sh check sanitize    # no wheels needed
#
# Needs nvidia-smi, nvcc, cmake, and python3 with torch (CUDA), numpy, onnx, click: what this workplace's GPU
# image has. The bench phase also needs onnx-graphsurgeon and onnxconverter-common, carried as wheels in .whl/
# (fetch them here, with network, by the one command in bench/gpu/README.md); without them the script stops at
# once with one line saying so, before any GPU work. Each phase has a time budget (seconds, overridable:
# BUILD_BUDGET CHECK_BUDGET SANITIZE_BUDGET BENCH_BUDGET) and the whole run stops starting steps after
# TOTAL_BUDGET (default 450 s). A failing step never stops the next one; summary.txt lists each step's outcome.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
WHEELS=${DEPRUNE_WHEELS:-$REPO/.whl}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${OUT:-$REPO/bench/results/gpu_run_$STAMP}
WORK=$(mktemp -d)
BUILD=$REPO/build/gpu-run
PHASES=" ${*:-check sanitize bench} "
TOTAL_BUDGET=${TOTAL_BUDGET:-450}
# The wheels bench needs (pure Python); the fetch command is in bench/gpu/README.md.
BENCH_WHEELS=(onnx_graphsurgeon onnxconverter_common)
export PYTHONUNBUFFERED=1

wants() { [[ $PHASES == *" $1 "* ]]; }

# ---- wheels first: a missing one stops the script before any GPU time is spent --------------------------------
if wants bench; then
    for module in "${BENCH_WHEELS[@]}"; do
        if ! ls "$WHEELS"/"$module"-*.whl >/dev/null 2>&1; then
            echo "run_all.sh: error: $WHEELS has no $module wheel, which the bench phase needs; fetch the wheels" \
                 "with the command in bench/gpu/README.md, or run only 'bash bench/gpu/run_all.sh check sanitize'"
            exit 2
        fi
    done
fi

mkdir -p "$RESULTS"
exec > >(tee -a "$RESULTS/run_all.log") 2>&1

STEPS=()
remaining() { echo $((TOTAL_BUDGET - SECONDS)); }
step() {  # step NAME BUDGET COMMAND...: run with min(BUDGET, time left), log, remember the outcome
    local name=$1 budget=$2 start=$SECONDS rc left
    shift 2
    left=$(remaining)
    if ((left < 10)); then
        echo "=== [$name] skipped: total budget of $TOTAL_BUDGET s spent"
        STEPS+=("$name: skipped (total budget spent)")
        return 0
    fi
    ((budget > left)) && budget=$left
    echo "=== [$name] (budget $budget s) $*"
    timeout --kill-after=5 "$budget" "$@"
    rc=$?
    local outcome="exit $rc"
    ((rc == 124 || rc == 137)) && outcome="TIMEOUT after $budget s"
    echo "=== [$name] $outcome after $((SECONDS - start)) s"
    STEPS+=("$name: $outcome ($((SECONDS - start)) s)")
    return $rc
}

summary() {
    {
        echo "run_all.sh $STAMP, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), phases:$PHASES"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
        printf '%s\n' "${STEPS[@]}"
        grep -E '^(total |CUDA graph |[0-9]+ failure|budget of|sanitizer:)' "$RESULTS/run_all.log" || true
        grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$RESULTS"/memcheck.log "$RESULTS"/racecheck.log 2>/dev/null || true
        echo "total wall time $SECONDS s"
    } > "$RESULTS/summary.txt"
    rm -rf "$WORK"
    echo "results in $RESULTS:"
    ls -la "$RESULTS"
}
trap summary EXIT

# ---- setup: what this machine has; deprune-onnx from this checkout (no install, no network) --------------------
echo "== deprune-onnx GPU run $STAMP, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), phases:$PHASES"
nvidia-smi || { echo "run_all.sh: error: no nvidia-smi: this is not a GPU machine"; exit 2; }
nvcc --version | tail -n 2
cmake --version | head -n 1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "run_all.sh: error: $PY has no torch with CUDA (set PYTHON to an interpreter that has it)"; exit 2; }
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', \
torch.backends.cudnn.version(), torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))"

# The Click front end lives in cli/ but imports as deprune_onnx.cli (pyproject's package-dir): a symlink shim.
mkdir -p "$WORK/shim/deprune_onnx"
ln -s "$REPO"/deprune_onnx/* "$WORK/shim/deprune_onnx/"
ln -s "$REPO/cli" "$WORK/shim/deprune_onnx/cli"
export PYTHONPATH=$WORK/shim${PYTHONPATH:+:$PYTHONPATH}
if wants bench; then  # pure-Python wheels, unpacked to a private folder (never into the image)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
        || { echo "run_all.sh: error: installing the wheels of $WHEELS failed"; exit 2; }
    export PYTHONPATH=$PYTHONPATH:$WORK/site
fi

# ---- build: the kernel library for this GPU only, and the host unit tests --------------------------------------
step build "${BUILD_BUDGET:-150}" "$PY" -c "from deprune_onnx.trt.native import build_native; \
print(build_native('$BUILD', None, cuda_architectures='native', targets=['deprune_drdw_kernels', \
'drdw_core_tests']))" || { echo "build failed: nothing to run"; exit 1; }
step host-tests 20 "$BUILD/drdw_core_tests"

# ---- sanitize: probe with a tiny CUDA program, then the quick check under memcheck and racecheck ----------------
if wants sanitize; then
    cat > "$WORK/probe.cu" <<'EOF'
#include <cstdio>
__global__ void touch(int* p) { p[threadIdx.x] = threadIdx.x; }
int main() {
    int* p = nullptr;
    if (cudaMalloc(&p, 32 * sizeof(int)) != cudaSuccess) { std::puts("probe: cudaMalloc failed"); return 1; }
    touch<<<1, 32>>>(p);
    cudaError_t e = cudaDeviceSynchronize();
    std::printf("probe: %s\n", cudaGetErrorString(e));
    return e == cudaSuccess ? 0 : 1;
}
EOF
    SANITIZER_OK=0
    if ! command -v compute-sanitizer >/dev/null; then
        echo "sanitizer: skipped (compute-sanitizer not on PATH)"
    elif ! nvcc -arch=native -o "$WORK/probe" "$WORK/probe.cu"; then
        echo "sanitizer: skipped (the probe did not compile)"
    elif ! timeout 60 compute-sanitizer --tool memcheck --error-exitcode 3 "$WORK/probe" > "$WORK/probe.log" 2>&1 \
            || ! grep -q "ERROR SUMMARY: 0 errors" "$WORK/probe.log"; then
        echo "sanitizer: skipped (compute-sanitizer refuses this device or driver on a correct 32-thread probe):"
        tail -n 5 "$WORK/probe.log"
    else
        SANITIZER_OK=1
    fi
    if ((SANITIZER_OK)); then
        FILTER=()
        compute-sanitizer --kernel-name kns=touch --error-exitcode 3 "$WORK/probe" >/dev/null 2>&1 \
            && FILTER=(--kernel-name kns=drSparseDwConv)
        # Without the caching allocator every torch tensor is its own cudaMalloc: a write past one is an error.
        export PYTORCH_NO_CUDA_MEMORY_CACHING=1
        for tool in memcheck racecheck; do
            step "$tool" "${SANITIZE_BUDGET:-75}" compute-sanitizer --tool "$tool" \
                --error-exitcode 3 "${FILTER[@]}" --log-file "$RESULTS/$tool.log" \
                "$PY" bench/gpu/dr_dwconv_check.py --quick --build-dir "$BUILD" --output "$WORK/quick_$tool.json"
        done
        unset PYTORCH_NO_CUDA_MEMORY_CACHING
    else
        STEPS+=("memcheck: skipped (sanitizer refused, see run_all.log)" "racecheck: skipped (sanitizer refused)")
    fi
fi

# ---- check: every DW layer of three architectures, 4 ratios, batch 1/32, fp32/fp16, vs cuDNN --------------------
if wants check; then
    check_budget=${CHECK_BUDGET:-200}
    step check "$check_budget" "$PY" bench/gpu/dr_dwconv_check.py --build-dir "$BUILD" \
        --budget-s $((check_budget - 30)) --output "$RESULTS/dr_dwconv_check.json"
fi

# ---- bench: deprune-onnx prune + bench on the sample MobileNetV2 (bh, DW ratio 0.5), float32 and float16 ----------
if wants bench; then
    SAMPLE=samples/mobilenet_v2_torchvision.onnx
    # PYTHONSAFEPATH: -m would put the checkout first on sys.path, whose deprune_onnx has no cli (the shim has).
    deprune() { PYTHONSAFEPATH=1 "$PY" -m deprune_onnx.cli.main "$@"; }
    bench_one() {  # bench_one DTYPE: prune once, then time kernel versions 1 and 2 side by side
        deprune prune "$SAMPLE" "$WORK/mv2_bh50_$1.onnx" --method bh --dw-ratio 0.5 --dtype "$1" || return 1
        for kernel in 1 2; do
            deprune bench "$WORK/mv2_bh50_$1.onnx" --batch 1,32 --kernel "$kernel" --build-dir "$BUILD" --json \
                > "$WORK/bench_$1_v$kernel.json" || return 1
        done
    }
    export -f deprune bench_one
    export PY SAMPLE WORK BUILD
    step bench-float32 "${BENCH_BUDGET:-60}" bash -c 'bench_one float32'
    step bench-float16 "${BENCH_BUDGET:-60}" bash -c 'bench_one float16'
    "$PY" -c "import json, os, sys; json.dump({run: json.load(open(f'$WORK/bench_{run}.json')) for run in sys.argv[1:] \
        if os.path.exists(f'$WORK/bench_{run}.json')}, open('$RESULTS/bench_mv2_bh50.json', 'w'), indent=1)" \
        float32_v1 float32_v2 float16_v1 float16_v2
fi
