#!/usr/bin/env bash
# deprune-onnx finetune on CUDA (issue 15, item 2: AMP on CUDA), run after run_all.sh in the same device call:
# prune the sample MobileNetV2 (bh, DW ratio 0.5, dense), then fine-tune it for 2 epochs on labelled ImageNet
# validation images with --device cuda, once with --amp and once with --no-amp, and print both runs' validation
# metrics and wall times, the autocast dtype (bfloat16 where the GPU supports it, else float16 with a
# GradScaler) and the optimizer steps the scaler skipped per epoch (the 2026-11-30 H200 run, float16 + scaler:
# 4 of 4 skipped, weights unchanged). finetune itself checks that the masks and removed channels are unchanged
# after training and after write-back, so exit 0 of each run is that check passing on CUDA.
#
#   IMAGES=DIR bash bench/gpu/finetune_smoke.sh      # DIR: imagenet_<index>_<label>.jpg files (foolbox's data/)
#
# Needs python3 with torch (CUDA), torchvision, onnx, onnxruntime, numpy, click, pillow, and the wheels of .whl/
# (onnx2torch, onnx-graphsurgeon, onnxconverter-common; bench/gpu/README.md). NCCL needs two GPUs at least (two
# processes on one GPU are refused by NCCL), so the multi-process path is not exercised here.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # cpu: try the script on a machine without a GPU (AMP is then ignored)
WHEELS=${DEPRUNE_WHEELS:-$REPO/.whl}
IMAGES=${IMAGES:-$REPO/.gpu_images}
RESULTS=${OUT:-$REPO/bench/results/finetune_smoke_$(date -u +%Y%m%dT%H%M%SZ)}
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1
trap 'rm -rf "$WORK"' EXIT

ls "$IMAGES"/imagenet_*.jpg >/dev/null 2>&1 \
    || { echo "finetune_smoke.sh: error: $IMAGES has no imagenet_<index>_<label>.jpg images (set IMAGES)"; exit 2; }
ls "$WHEELS"/onnx2torch-*.whl >/dev/null 2>&1 \
    || { echo "finetune_smoke.sh: error: $WHEELS has no onnx2torch wheel (bench/gpu/README.md)"; exit 2; }
mkdir -p "$RESULTS" "$WORK/train" "$WORK/val"
exec > >(tee -a "$RESULTS/finetune_smoke.log") 2>&1

mkdir -p "$WORK/shim/deprune_onnx"
ln -s "$REPO"/deprune_onnx/* "$WORK/shim/deprune_onnx/"
ln -s "$REPO/cli" "$WORK/shim/deprune_onnx/cli"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
    || { echo "finetune_smoke.sh: error: installing the wheels of $WHEELS failed"; exit 2; }
export PYTHONPATH=$WORK/shim:$WORK/site${PYTHONPATH:+:$PYTHONPATH}

# First 16 images train, the rest validate (labels from the file names).
mapfile -t all < <(ls "$IMAGES"/imagenet_*.jpg | sort)
for i in "${!all[@]}"; do
    if ((i < 16)); then cp "${all[$i]}" "$WORK/train/"; else cp "${all[$i]}" "$WORK/val/"; fi
done
echo "images: $(ls "$WORK/train" | wc -l) train, $(ls "$WORK/val" | wc -l) validation"

# PYTHONSAFEPATH: -m would put the checkout first on sys.path, whose deprune_onnx has no cli (the shim has).
deprune() { PYTHONSAFEPATH=1 "$PY" -m deprune_onnx.cli.main "$@"; }
SAMPLE=samples/mobilenet_v2_torchvision.onnx
deprune prune "$SAMPLE" "$WORK/pruned.onnx" --method bh --dw-ratio 0.5 --format dense -q || exit 1

status=0
for amp in amp no-amp; do
    start=$SECONDS
    deprune finetune "$WORK/pruned.onnx" "$WORK/tuned_$amp.onnx" --teacher "$SAMPLE" --images "$WORK/train" \
        --val-images "$WORK/val" --epochs 2 --batch 8 --optimizer adam --device "$DEVICE" "--$amp" --workers 2 \
        --report "$WORK/finetune_$amp.json"
    rc=$?
    echo "finetune --device $DEVICE --$amp: exit $rc after $((SECONDS - start)) s"
    ((rc == 0)) || status=1
done
# One JSON for both runs (the device tool returns at most 8 files; run_all.sh writes 6).
"$PY" - "$WORK" "$RESULTS/finetune_cuda.json" "$DEVICE" <<'EOF'
import json, sys, pathlib
work, out, device = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
reports = {amp: json.loads((work / f"finetune_{amp}.json").read_text())
           for amp in ("amp", "no-amp") if (work / f"finetune_{amp}.json").exists()}
out.write_text(json.dumps({"device": device, "runs": reports}, indent=1))
for amp, report in reports.items():
    extra = report["training"]["extra"]
    skipped = [f"{r['skipped_steps']}/{r['steps']}" for r in report["history"][1:]]
    print(f"finetune {device} --{amp}: best epoch {report['best_epoch']}, autocast {extra['autocast']}, "
          f"grad scaler {extra['grad_scaler']}, skipped steps per epoch {', '.join(skipped)}")
    for warning in extra["warnings"]:
        print(f"    WARNING: {warning}")
    for epoch in report["history"]:
        print("   ", {k: round(v, 4) if isinstance(v, float) else v for k, v in epoch.items()})
EOF
exit $status
