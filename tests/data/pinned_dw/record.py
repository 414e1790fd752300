"""Record the DW decisions of the three sample models (samples/) for dcp / b / bh at 0.5 and 0.78, plus
MobileNetV3-Small bh at 0.7.

For every layer: the HSR pattern (o / u / aligned, "-" for dcp and b), K per sub-GEMM, whether the balance step
moved it, and the SHA-256 of its keep mask (np.packbits of the mask in row-major order, 1 = kept), so a test
pins WHICH layers and weights are chosen, not only how many. tests/test_pinned_patterns.py compares today's
planner with this file.

Re-record only when a change of these decisions is intended, and give the reason with --note (it is stored in
the JSON next to the commit it was made on):

    python tests/data/pinned_dw/record.py --note "why the decisions changed"
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import onnx

from deprune_onnx.analysis import analyze
from deprune_onnx.dw.planner import DWOptions, plan_dw_layers

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
MODELS = {
    "mobilenet_v2": "mobilenet_v2_torchvision.onnx",
    "mobilenet_v3_small": "ppocr_mobile_v2_cls_mobilenetv3_small.onnx",
    "pplcnet": "pplcnet_x1_0_doc_orientation_rapid.onnx",
}
METHODS = ("dcp", "b", "bh")
RATIOS = (0.5, 0.78)
# MobileNetV3-Small at 0.7: the balance step's beta tie-break shows on this model at this ratio (issue #17).
EXTRA_CASES = (("mobilenet_v3_small", "bh", 0.7),)


def mask_sha256(keep: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(keep.astype(bool).reshape(-1)).tobytes()).hexdigest()


def decisions(model: onnx.ModelProto, method: str, ratio: float) -> list[dict]:
    """One entry per DW layer, in model order."""
    plans = plan_dw_layers(model, analyze(model), DWOptions(method=method, dw_ratio=ratio))
    return [{"name": p.name, "pattern": p.pattern, "kept_per_subgemm": p.kept_per_subgemm,
             "balanced": "balance step" in p.note, "mask_sha256": mask_sha256(p.keep_mask())} for p in plans]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--note", required=True, help="why (re-)recorded")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    cases = {}
    for key, filename in MODELS.items():
        model = onnx.load(str(REPO / "samples" / filename))
        for method in METHODS:
            for ratio in RATIOS:
                cases[f"{key}/{method}/{ratio}"] = decisions(model, method, ratio)
    for key, method, ratio in EXTRA_CASES:
        cases[f"{key}/{method}/{ratio}"] = decisions(onnx.load(str(REPO / "samples" / MODELS[key])), method, ratio)
    data = {"recorded_on_commit": commit, "note": args.note, "command": "python tests/data/pinned_dw/record.py",
            "cases": cases}
    (HERE / "dw_decisions.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
