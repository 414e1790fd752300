"""Calibrated PW channel removal against onnxsim's structured pruning at equal parameter counts (issue 14).

Side by side in one run, on MobileNetV2 (samples/), PW channels only (no DW pruning), at every --pw-ratios R:
  (a) deprune-onnx  --pw-ratio R --pw-scope all --pw-align 8               (l2 filter norms, no data)
  (b) deprune-onnx  the same with --calib: channels ranked by activation energy, 1x1 readers refit by least squares
  (c) onnxsim 0.8.1 apply_structured_pruning(sparsity=S_c)                  (l2, no data)
  (d) onnxsim 0.8.1 apply_structured_wanda_pruning(calibration samples, sparsity=S_d)
S_c and S_d are searched so the parameter counts match (a)'s as closely as onnxsim's channel rounding allows.
onnxsim is a peer, not a dependency: it runs in its own virtual environment (``--onnxsim-python``, e.g.
bench/.work/venv/bin/python after ``python -m venv bench/.work/venv && bench/.work/venv/bin/pip install
onnxsim==0.8.1 onnxruntime``), called as a subprocess.

Split (foolbox's imagenet_00..19): calibration imagenet_00..04 x 10 views (for (b) and (d) alike); evaluation
imagenet_10..19 x 10 views, never used for calibration or for choosing a setting. Metrics against the unpruned
model: top-1 agreement, mean KL(unpruned || pruned).

    python bench/pw_compare.py --onnxsim-python bench/.work/venv/bin/python --out bench/results/pw_compare.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from deprune_onnx.options import CalibOptions, DWOptions, PruneOptions, PWOptions
from deprune_onnx.evaluation import ModelRunner, evaluate_outputs
from deprune_onnx.evaluation.images import find_images, get_preset, image_labels, load_image_set
from deprune_onnx.pipeline import prune_model
from deprune_onnx.pw import count_params
from deprune_onnx.recovery.refit import analysis_input

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import CALIB, EVALUATION, REPO, foolbox_data_dir  # noqa: E402

ONNXSIM_SCRIPT = r"""
import sys, numpy as np, onnx, onnxsim
source, out, function, sparsity, calib, name = sys.argv[1:7]
if function == "apply_structured_pruning":
    model = onnxsim.apply_structured_pruning(source, sparsity=float(sparsity))
else:
    data = np.load(calib)
    feeds = [{name: data[i:i + 1]} for i in range(len(data))]
    model = onnxsim.apply_structured_wanda_pruning(source, calibration_data=feeds, num_samples=len(feeds),
                                                   sparsity=float(sparsity))
onnx.save(model, out)
"""


def run_onnxsim(python: str, source: Path, function: str, sparsity: float, calib: Path, input_name: str,
                work: Path) -> onnx.ModelProto:
    out = work / f"{function}-{sparsity:.4f}.onnx"
    subprocess.run([python, "-c", ONNXSIM_SCRIPT, str(source), str(out), function, str(sparsity), str(calib),
                    input_name], check=True, capture_output=True)
    return onnx.load(str(out))


def match_params(python: str, source: Path, function: str, target: int, calib: Path, input_name: str,
                 work: Path, low: float = 0.05, high: float = 0.6, steps: int = 7) -> tuple[float, onnx.ModelProto]:
    """Bisection on onnxsim's sparsity for the parameter count nearest ``target`` (fewer params = more sparse)."""
    best = None
    for _ in range(steps):
        middle = round((low + high) / 2, 4)
        model = run_onnxsim(python, source, function, middle, calib, input_name, work)
        params = count_params(model)
        if best is None or abs(params - target) < abs(best[2] - target):
            best = (middle, model, params)
        if params > target:
            low = middle
        else:
            high = middle
    return best[0], best[1]


def compare_at(ratio: float, original: onnx.ModelProto, source: Path, images: Path, calib_file: Path,
               input_name: str, eval_set, reference: np.ndarray, args: argparse.Namespace, work: Path) -> list[dict]:
    """The four rows at one --pw-ratio: ours without and with --calib, then onnxsim's two functions at the
    parameter count of ours."""
    ours = {}
    for label, calib in (("deprune-onnx l2 (no data)", None),
                         ("deprune-onnx --calib (activation + LS refit)",
                          CalibOptions(sources=[str(images / CALIB)], preprocess="imagenet", crops=args.crops))):
        model = onnx.ModelProto()
        model.CopyFrom(original)
        start = time.perf_counter()
        prune_model(model, PruneOptions(dw=DWOptions(method="b", dw_ratio=0.0),
                                        pw=PWOptions(ratio=ratio, align=8, scope="all"),
                                        output_format="dense", calib=calib))
        ours[label] = (model, time.perf_counter() - start,
                       f"--pw-ratio {ratio} --pw-scope all --pw-align 8" + (" --calib" if calib else ""))
    target = count_params(next(iter(ours.values()))[0])
    peers = {}
    for label, function in (("onnxsim apply_structured_pruning", "apply_structured_pruning"),
                            ("onnxsim apply_structured_wanda_pruning", "apply_structured_wanda_pruning")):
        start = time.perf_counter()
        sparsity, model = match_params(args.onnxsim_python, source, function, target, calib_file, input_name, work)
        peers[label] = (model, time.perf_counter() - start, f"{function}(sparsity={sparsity})")
    rows = []
    for label, (model, seconds, setting) in {**ours, **peers}.items():
        evaluation = evaluate_outputs(eval_set, ModelRunner(model, label).run(eval_set.inputs), reference)
        rows.append({"ratio": ratio, "tool": label, "setting": setting, "params": count_params(model),
                     "agreement": evaluation.agreement.agreement, "kl": evaluation.agreement.kl_mean,
                     "top1": evaluation.labels.top1 if evaluation.labels else None, "seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnxsim-python", required=True)
    parser.add_argument("--pw-ratios", type=lambda text: [float(x) for x in text.split(",")],
                        default=[0.05, 0.1, 0.2], help="Comma-separated --pw-ratio values, one comparison each.")
    parser.add_argument("--crops", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()[0]
    images = foolbox_data_dir()
    source = REPO / "samples" / "mobilenet_v2_torchvision.onnx"
    original = onnx.load(str(source))
    preset = get_preset("imagenet")
    calib_paths = find_images([str(images / CALIB)])
    calib_set = load_image_set(calib_paths, preset, args.crops)
    eval_paths = find_images([str(images / EVALUATION)])
    eval_set = load_image_set(eval_paths, preset, args.crops, image_labels(eval_paths))
    reference = ModelRunner(original, "reference").run(eval_set.inputs)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pw-compare-") as folder:
        work = Path(folder)
        calib_file = work / "calib.npy"
        np.save(calib_file, calib_set.inputs)
        input_name = analysis_input(original)
        for ratio in args.pw_ratios:
            rows += compare_at(ratio, original, source, images, calib_file, input_name, eval_set, reference,
                               args, work)
    import onnxruntime
    lines = ["# PW channel removal: deprune-onnx vs onnxsim 0.8.1 at equal parameter counts", "",
             f"- date: {started.isoformat(timespec='seconds')}",
             f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load_start:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end; python {platform.python_version()}, "
             f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}; onnxsim 0.8.1 in its own venv",
             f"- command: `python bench/pw_compare.py {' '.join(sys.argv[1:])}`",
             f"- model: MobileNetV2 (samples/), unpruned params {count_params(original):,}; PW channels only",
             f"- calibration: {CALIB} x {args.crops} views (deprune --calib and onnxsim wanda alike); evaluation: "
             f"{EVALUATION} x {args.crops} views, never used for calibration or choosing a setting",
             "- onnxsim sparsity searched (bisection, 7 runs) for the parameter count nearest deprune's", "",
             "| --pw-ratio | tool | setting | params | agreement | KL | top-1 | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        top1 = f"{100 * r['top1']:.0f}%" if r["top1"] is not None else "-"
        lines.append(f"| {r['ratio']} | {r['tool']} | `{r['setting']}` | {r['params']:,} | "
                     f"{100 * r['agreement']:.0f}% | {r['kl']:.3f} | {top1} | {r['seconds']} |")
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
