"""Record the outputs of ``deprune-onnx prune`` for a fixed matrix of sample models x options.

Run once on the commit named in ``matrix.json`` (before the layout of issue #11); ``tests/test_golden.py``
checks that later code writes byte-identical models and that these version-1 plans re-apply to the same bytes.

    python tests/data/golden_v1/record.py
"""
from __future__ import annotations

import gzip
import importlib.util
import hashlib
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SAMPLES = REPO / "samples"

MODELS = {
    "mobilenet_v2": "mobilenet_v2_torchvision.onnx",
    "mobilenet_v3_small": "ppocr_mobile_v2_cls_mobilenetv3_small.onnx",
    "pplcnet": "pplcnet_x1_0_doc_orientation_rapid.onnx",
}
OPTIONS = {
    "dcp-0.5-plugin": ["--method", "dcp", "--dw-ratio", "0.5"],
    "b-0.5-dense": ["--method", "b", "--dw-ratio", "0.5", "--format", "dense"],
    "bh-0.78-plugin": ["--method", "bh", "--dw-ratio", "0.78"],
    "bh-0.5-pw0.5-align8-plugin": ["--method", "bh", "--dw-ratio", "0.5", "--pw-ratio", "0.5", "--pw-align", "8"],
    "bh-0.5-pwall0.3-dense": ["--method", "bh", "--dw-ratio", "0.5", "--pw-ratio", "0.3", "--pw-align", "8",
                          "--pw-scope", "all", "--format", "dense"],
    "channel-0.5-dense": ["--method", "channel", "--dw-ratio", "0.5", "--format", "dense"],
    "global-0.5-dense": ["--method", "global", "--dw-ratio", "0.5", "--format", "dense"],
    "bh-0.5-fp16-plugin": ["--method", "bh", "--dw-ratio", "0.5", "--dtype", "float16"],
    "b-0.5-nm24-plugin": ["--method", "b", "--dw-ratio", "0.5", "--pw-method", "nm24"],
}
# Calibrated cases, MobileNetV2 only (ImageNet classes): ``{images}`` is foolbox's packaged ImageNet samples.
# --no-calib-project (added 2026-11-30, when the projection refit became --calib's default): the DW refit alone,
# what --calib did when these were recorded.
CALIB_OPTIONS = {
    "b-0.3-calib-dense": ["--method", "b", "--dw-ratio", "0.3", "--format", "dense", "--calib",
                      "{images}/imagenet_0[0-4]_*.jpg", "--calib-crops", "2", "--no-calib-project"],
    "bh-0.5-allocate-plugin": ["--method", "bh", "--dw-ratio", "0.5", "--calib", "{images}/imagenet_0[0-4]_*.jpg",
                           "--calib-crops", "1", "--allocate", "kl", "--no-calib-project"],
}


def foolbox_images() -> Path:
    """foolbox's packaged sample images (a test dependency), located without importing foolbox."""
    spec = importlib.util.find_spec("foolbox")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/golden_v1")
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    cases = {}
    matrix = [(model_key, option_key, args) for model_key in MODELS for option_key, args in OPTIONS.items()]
    matrix += [("mobilenet_v2", option_key, args) for option_key, args in CALIB_OPTIONS.items()]
    for model_key, option_key, args in matrix:
        file_name = MODELS[model_key]
        case = f"{model_key}__{option_key}"
        out = work / f"{case}.onnx"
        concrete = [arg.format(images=foolbox_images()) for arg in args]
        subprocess.run(["deprune-onnx", "prune", str(SAMPLES / file_name), str(out), "--quiet", *concrete],
                       check=True)
        plan = out.with_name(f"{case}.plan.json")
        report = json.loads(out.with_name(f"{case}.report.json").read_text())
        (HERE / f"{case}.plan.json.gz").write_bytes(gzip.compress(plan.read_bytes(), mtime=0))
        cases[case] = {"model": file_name, "args": args, "onnx_sha256": sha256(out),
                       "report_keys": sorted(report)}
    (HERE / "matrix.json").write_text(json.dumps({"commit": commit, "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
