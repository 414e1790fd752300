#!/usr/bin/env bash
# The whole first GPU session in one script (see bench/gpu/README.md): on a fresh GPU box with this repository,
# set up Python, build the kernel library, run the correctness + timing check, run it once under compute-sanitizer,
# time `deprune-onnx bench` on a pruned MobileNetV2 (samples/), and, where TensorRT is installed, build an engine
# and compare it with ONNX Runtime. Every result lands in $OUT (the device tool's folder) or, without $OUT, in
# bench/results/gpu_run_<date>/.
#
#   bash bench/gpu/run_all.sh                 # every phase
#   bash bench/gpu/run_all.sh check           # setup + build + the full check only
#   bash bench/gpu/run_all.sh sanitize bench  # setup + build + compute-sanitizer + deprune-onnx bench
#
# Phases: check, sanitize, bench, trt (skipped with a note when TensorRT is not installed). Setup and the build run
# every time (incremental). A failing step never stops the next one; summary.txt lists each step's exit code.
# Environment: PYTHON (default python3), DEPRUNE_WHEELS (wheel folder for offline installs, default .whl),
# DEPRUNE_TRT_INCLUDE (TensorRT headers), CHECK_TIMEOUT / SANITIZE_TIMEOUT / BENCH_TIMEOUT / TRT_TIMEOUT (seconds).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
WHEELS=${DEPRUNE_WHEELS:-$REPO/.whl}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${OUT:-$REPO/bench/results/gpu_run_$STAMP}
WORK=$(mktemp -d)
BUILD=$REPO/build/native
PHASES=" ${*:-check sanitize bench trt} "
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
exec > >(tee -a "$RESULTS/run_all.log") 2>&1

STEPS=()
step() {  # step NAME COMMAND...: run, log, remember the exit code, never abort the script
    local name=$1 start=$SECONDS rc
    shift
    echo "=== [$name] $*"
    "$@"
    rc=$?
    echo "=== [$name] exit $rc after $((SECONDS - start)) s"
    STEPS+=("$name: exit $rc")
    return $rc
}
wants() { [[ $PHASES == *" $1 "* ]]; }
deprune() { "$PY" -m deprune_onnx.cli.main "$@"; }

summary() {
    {
        echo "run_all.sh $STAMP on $(hostname), phases:$PHASES"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
        printf '%s\n' "${STEPS[@]}"
        grep -E '^(total |CUDA graph |[0-9]+ failure)' "$RESULTS/run_all.log" || true
        grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$RESULTS"/*check.log 2>/dev/null || true
    } > "$RESULTS/summary.txt"
    rm -rf "$WORK"
    echo "results in $RESULTS:"
    ls -la "$RESULTS"
}
trap summary EXIT

# ---- setup: what this machine has, torch, Python packages, deprune-onnx itself --------------------------------
echo "== deprune-onnx GPU run $STAMP, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), phases:$PHASES"
nvidia-smi || { echo "no nvidia-smi: this is not a GPU machine"; exit 2; }
nvcc --version | tail -n 2
cmake --version | head -n 1
compute-sanitizer --version 2>/dev/null | tail -n 1
"$PY" --version

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "torch with CUDA not importable by $PY; trying pip install torch"
    "$PY" -m pip install -q torch
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "no usable torch+CUDA for $PY (set PYTHON to an interpreter that has it)"; exit 2; }
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', \
torch.backends.cudnn.version(), torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))"

# Runtime dependencies the GPU image may lack: from $WHEELS when it holds a wheel (no internet), else from PyPI.
for pair in onnx_graphsurgeon:onnx-graphsurgeon onnxconverter_common:onnxconverter-common polygraphy:polygraphy \
            onnx:onnx onnxruntime:onnxruntime click:click; do
    module=${pair%%:*} package=${pair##*:}
    "$PY" -c "import $module" 2>/dev/null && continue
    wheel=$(ls "$WHEELS"/"${module}"-*.whl 2>/dev/null | head -n 1)
    if [[ -n $wheel ]]; then
        "$PY" -m pip install -q --no-index --no-deps "$wheel"
    else
        "$PY" -m pip install -q "$package"
    fi
    "$PY" -c "import $module" 2>/dev/null || echo "warning: $package not installed; steps that need it are skipped"
done

# deprune-onnx itself: editable install without touching the index; else a symlink shim on PYTHONPATH.
if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e "$REPO"; then
    echo "pip install -e failed; using a symlink shim of the package on PYTHONPATH"
    mkdir -p "$WORK/shim/deprune_onnx"
    ln -s "$REPO"/deprune_onnx/* "$WORK/shim/deprune_onnx/"
    ln -s "$REPO/cli" "$WORK/shim/deprune_onnx/cli"
    export PYTHONPATH=$WORK/shim${PYTHONPATH:+:$PYTHONPATH}
fi
deprune --help >/dev/null || { echo "deprune-onnx is not importable"; exit 2; }

# ---- build: the kernel library for this GPU (and the plugin where TensorRT headers exist), host unit tests -----
TRT_INCLUDE=${DEPRUNE_TRT_INCLUDE:-}
for candidate in /usr/include/x86_64-linux-gnu /usr/local/tensorrt/include /opt/tensorrt/include; do
    [[ -z $TRT_INCLUDE && -f $candidate/NvInferRuntime.h ]] && TRT_INCLUDE=$candidate
done
export DEPRUNE_TRT_INCLUDE=$TRT_INCLUDE
step build "$PY" -c "from deprune_onnx.trt.native import build_native; print(build_native('$BUILD', \
'${TRT_INCLUDE}' or None, cuda_architectures='native'))" || { echo "build failed: nothing to run"; exit 1; }
step host-tests "$BUILD/drdw_core_tests"

# ---- check: every DW layer of three architectures, 4 ratios, batch 1/32, fp32/fp16, vs cuDNN --------------------
if wants check; then
    step check timeout "${CHECK_TIMEOUT:-480}" "$PY" bench/gpu/dr_dwconv_check.py --build-dir "$BUILD" \
        --output "$RESULTS/dr_dwconv_full.json"
fi

# ---- sanitize: the quick check under memcheck and racecheck (only our kernel when the filter is supported) -----
if wants sanitize; then
    # Without the caching allocator every torch tensor is its own cudaMalloc, so memcheck sees any write past one.
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    FILTER=()
    if compute-sanitizer --kernel-name kns=drSparseDwConv --print-limit 1 true >/dev/null 2>&1; then
        FILTER=(--kernel-name kns=drSparseDwConv)
    fi
    step memcheck timeout "${SANITIZE_TIMEOUT:-240}" compute-sanitizer --tool memcheck --error-exitcode 3 \
        "${FILTER[@]}" --log-file "$RESULTS/memcheck.log" \
        "$PY" bench/gpu/dr_dwconv_check.py --quick --build-dir "$BUILD" --output "$RESULTS/dr_dwconv_quick.json"
    step racecheck timeout "${SANITIZE_TIMEOUT:-240}" compute-sanitizer --tool racecheck --error-exitcode 3 \
        "${FILTER[@]}" --log-file "$RESULTS/racecheck.log" \
        "$PY" bench/gpu/dr_dwconv_check.py --quick --build-dir "$BUILD" --output "$WORK/racecheck_quick.json"
    unset PYTORCH_NO_CUDA_MEMORY_CACHING
fi

# ---- bench: deprune-onnx bench on the sample MobileNetV2, pruned bh at DW ratio 0.5 (and dense, and float16) -----
if wants bench; then
    SAMPLE=samples/mobilenet_v2_torchvision.onnx
    timeout "${BENCH_TIMEOUT:-300}" bash -c '
        set -u
        deprune() { "$0" -m deprune_onnx.cli.main "$@"; }
        deprune prune "$1" "$2/mv2_bh50.onnx" --method bh --dw-ratio 0.5 \
            && deprune bench "$2/mv2_bh50.onnx" --batch 1,32 \
            && deprune bench "$2/mv2_bh50.onnx" --batch 1,32 --json > "$3/bench_mv2_bh50.json"
    ' "$PY" "$SAMPLE" "$WORK" "$RESULTS"
    STEPS+=("bench mv2 bh 0.5 float32: exit $?")
    timeout "${BENCH_TIMEOUT:-300}" bash -c '
        deprune() { "$0" -m deprune_onnx.cli.main "$@"; }
        deprune prune "$1" "$2/mv2_dense.onnx" --method bh --dw-ratio 0 && deprune bench "$2/mv2_dense.onnx"
    ' "$PY" "$SAMPLE" "$WORK"
    STEPS+=("bench mv2 PR 0 float32: exit $?")
    if "$PY" -c "import onnxconverter_common" 2>/dev/null; then
        timeout "${BENCH_TIMEOUT:-300}" bash -c '
            deprune() { "$0" -m deprune_onnx.cli.main "$@"; }
            deprune prune "$1" "$2/mv2_bh50_fp16.onnx" --method bh --dw-ratio 0.5 --dtype float16 \
                && deprune bench "$2/mv2_bh50_fp16.onnx" --batch 1,32 \
                && deprune bench "$2/mv2_bh50_fp16.onnx" --batch 1,32 --json > "$3/bench_mv2_bh50_fp16.json"
        ' "$PY" "$SAMPLE" "$WORK" "$RESULTS"
        STEPS+=("bench mv2 bh 0.5 float16: exit $?")
    else
        STEPS+=("bench mv2 float16: skipped (onnxconverter-common missing)")
    fi
fi

# ---- trt: plugin + engine + Polygraphy comparison, only where TensorRT (Python) and its headers are installed -----
if wants trt; then
    if [[ -n $TRT_INCLUDE ]] && "$PY" -c "import tensorrt" 2>/dev/null; then
        timeout "${TRT_TIMEOUT:-300}" bash -c '
            set -u
            deprune() { "$0" -m deprune_onnx.cli.main "$@"; }
            polygraphy() { "$0" -c "import sys; from polygraphy.tools import main; sys.exit(main())" "$@"; }
            deprune prune "$1" "$2/mv2_bh50.onnx" --method bh --dw-ratio 0.5 \
                && deprune prune "$1" "$2/mv2_bh50_dense.onnx" --format dense --method bh --dw-ratio 0.5 \
                && deprune build-engine "$2/mv2_bh50.onnx" -o "$2/mv2_bh50.engine" --workspace 1024 \
                && polygraphy run "$2/mv2_bh50_dense.onnx" --onnxrt --save-outputs "$2/ref.json" \
                && polygraphy run "$2/mv2_bh50.onnx" --trt --plugins "$(deprune plugin-path)" \
                       --load-outputs "$2/ref.json"
        ' "$PY" samples/mobilenet_v2_torchvision.onnx "$WORK"
        STEPS+=("trt engine + polygraphy: exit $?")
    else
        STEPS+=("trt: skipped (TensorRT Python package or headers not installed)")
    fi
fi
