"""Predicted vs measured loss of ``--allocate kl`` (issue 14): is the summed per-layer KL wrong because layers
interact, or because the calibration images misjudge each layer?

For every DW layer of the model and each measured ratio (bh's tile-aligned ratios nearest --ratios), the layer
alone is pruned and refit by least squares (on the unpruned input, fitted on the allocation's calibration
samples) and measured two ways:
  calibration  on the allocation's calibration samples, each scored by a refit fitted without its image (what
               ``--allocate`` measures), as KL at T = 1, 2, 4 (times T^2) and the MSE of centred log-probabilities;
  choice       on the choice images (never used by ``--allocate``), KL at T = 1, refit fitted on all calibration
               samples.
Then, for each calibration measure, the allocation at --target is computed (recovery.allocation.allocate_ratios)
and reported with its summed calibration loss, its summed single-layer choice KL (additive prediction on held-out
images), and, with --whole, the whole model pruned to it (prune_model, bh with those per-layer ratios, --calib
refit, optionally --calib-project) measured on the calibration samples and the choice images. An "oracle" row
allocates with the choice curves themselves (a bound for any calibration measure, not a usable setting).
Evaluation images (imagenet_10..19) are never read.

    python bench/allocation_check.py --target 0.5 --whole --out bench/results/allocation_check.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import CALIB, CHOICE, MODELS, REPO, foolbox_data_dir  # noqa: E402

from deprune_onnx.analysis import analyze  # noqa: E402
from deprune_onnx.dw.planner import layer_mask  # noqa: E402
from deprune_onnx.evaluation import ModelRunner  # noqa: E402
from deprune_onnx.evaluation.images import find_images, fit_preset, get_preset, load_image_set  # noqa: E402
from deprune_onnx.evaluation.metrics import kl_divergence, log_probabilities  # noqa: E402
from deprune_onnx.onnx_io.folding import fold_conv_weight_chains  # noqa: E402
from deprune_onnx.onnx_io.graph import GraphIndex  # noqa: E402
from deprune_onnx.options import CalibOptions, DWOptions, PruneOptions  # noqa: E402
from deprune_onnx.pipeline import prune_model  # noqa: E402
from deprune_onnx.recovery.allocation import (LayerSensitivity, _aligned, allocate_ratios,  # noqa: E402
                                              predicted_loss)
from deprune_onnx.recovery.calibration import _evenly_spaced, calibration_set  # noqa: E402
from deprune_onnx.recovery.refit import (DEFAULT_DAMP, ParameterWriter, analysis_input, fold_ids,  # noqa: E402
                                         reference_stats, refit_channels, stacked)
from deprune_onnx.recovery.staged import StagedForward  # noqa: E402

MEASURES = ("kl1", "kl2", "kl4", "mse")


def _log_probs(outputs: np.ndarray) -> np.ndarray:
    return log_probabilities(outputs.reshape(len(outputs), -1))


def measures(reference: np.ndarray, pruned: np.ndarray) -> dict[str, float]:
    """KL at T = 1, 2, 4 (times T^2) and the MSE of centred log-probabilities, means over samples."""
    result = {}
    for t in (1, 2, 4):
        soft_ref = log_probabilities(reference / t, probabilities=False)
        soft = log_probabilities(pruned / t, probabilities=False)
        result[f"kl{t}"] = float(kl_divergence(soft_ref, soft).mean()) * t * t
    centred = (reference - reference.mean(1, keepdims=True)) - (pruned - pruned.mean(1, keepdims=True))
    result["mse"] = float(np.square(centred).mean())
    return result


def layer_curves(model: onnx.ModelProto, calib_in: np.ndarray, groups: np.ndarray, choice_in: np.ndarray,
                 ratios: list[float]) -> list[dict]:
    """Every DW layer alone at every ratio: calibration measures (refit held out by image) and choice KL."""
    analysis = analyze(model)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    index, writer = GraphIndex(work.graph), ParameterWriter(work)
    params = {}
    for layer in analysis.dw_layers:
        weight = index.constant(layer.weight)
        bias = index.constant(layer.bias) if layer.bias else np.zeros(weight.shape[0], weight.dtype)
        writer.write(layer.name, 1, weight, "check_weight")
        writer.write(layer.name, 2, bias, "check_bias")
        params[layer.name] = (weight, bias)
    output, image = work.graph.output[0].name, analysis_input(work)
    reference = {"calib": _log_probs(ModelRunner(model).run(calib_in)),
                 "choice": _log_probs(ModelRunner(model).run(choice_in))}
    runs = {"calib": StagedForward(work, {image: calib_in}), "choice": StagedForward(work, {image: choice_in})}
    nodes = {node.name: node for node in work.graph.node}
    folds = fold_ids(groups, len(calib_in))
    rows = []
    for layer in analysis.dw_layers:
        weight, bias = params[layer.name]
        node = nodes[layer.name]
        x = runs["calib"].advance([layer.input])[layer.input]
        runs["choice"].advance([layer.input])
        branches = {k: run.branch([output], [node.input[1], node.input[2]]) for k, run in runs.items()}
        w0 = stacked(weight, bias)
        per_fold = [reference_stats(x[folds == f], layer, w0) for f in range(folds.max() + 1)]
        total = per_fold[0]
        for fold in per_fold[1:]:
            total = total + fold

        def feed(fitted: np.ndarray) -> dict[str, np.ndarray]:
            return {node.input[1]: fitted[:, :-1].reshape(weight.shape).astype(weight.dtype),
                    node.input[2]: fitted[:, -1].astype(bias.dtype)}
        for asked in ratios:
            ratio = _aligned(asked, weight.shape, "bh", 32)
            keep = layer_mask(weight, "b", ratio).reshape(weight.shape[0], -1)
            held_out = np.zeros_like(reference["calib"])
            for f, fold in enumerate(per_fold):
                rows_f = np.flatnonzero(folds == f)
                fitted = refit_channels(total - fold, w0, keep, DEFAULT_DAMP)
                held_out[rows_f] = _log_probs(branches["calib"].run(feed(fitted), rows_f)[output])
            choice = _log_probs(branches["choice"].run(feed(refit_channels(total, w0, keep, DEFAULT_DAMP)))[output])
            rows.append({"layer": layer.name, "weights": int(weight.size), "shape": list(weight.shape),
                         "ratio": float(1.0 - keep.mean()), "calib": measures(reference["calib"], held_out),
                         "choice_kl": measures(reference["choice"], choice)["kl1"]})
            print(json.dumps({k: rows[-1][k] for k in ("layer", "ratio", "choice_kl")}), flush=True)
    return rows


def curves_of(rows: list[dict], value) -> tuple[list[LayerSensitivity], dict[str, tuple[int, ...]]]:
    names = list(dict.fromkeys(r["layer"] for r in rows))
    curves, shapes = [], {}
    for name in names:
        mine = [r for r in rows if r["layer"] == name]
        curves.append(LayerSensitivity(name, mine[0]["weights"], [0.0] + [r["ratio"] for r in mine],
                                       [0.0] + [value(r) for r in mine]))
        shapes[name] = tuple(mine[0]["shape"])
    return curves, shapes


def whole_model(model: onnx.ModelProto, ratios: dict[str, float], calib: CalibOptions, sets: dict[str, np.ndarray]
                ) -> dict[str, dict[str, float]]:
    work = onnx.ModelProto()
    work.CopyFrom(model)
    prune_model(work, PruneOptions(dw=DWOptions(method="bh", dw_ratio=0.5, layer_ratios=list(ratios.items())),
                                   output_format="dense", calib=calib))
    result = {}
    for name, inputs in sets.items():
        reference, pruned = ModelRunner(model).run(inputs), ModelRunner(work).run(inputs)
        agreement = float((reference.reshape(len(inputs), -1).argmax(1)
                           == pruned.reshape(len(inputs), -1).argmax(1)).mean())
        result[name] = {"kl": measures(_log_probs(reference), _log_probs(pruned))["kl1"], "agreement": agreement}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenet_v2", choices=list(MODELS))
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--ratios", default="0.25,0.5,0.75,0.9")
    parser.add_argument("--samples", type=int, default=16, help="calibration samples the curves use (--allocate)")
    parser.add_argument("--choice-views", type=int, default=4)
    parser.add_argument("--whole", action="store_true", help="also prune the whole model to each allocation")
    parser.add_argument("--project", action="store_true", help="whole models with --calib-project")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    images = foolbox_data_dir()
    file_name, preset_name = MODELS[args.model]
    model = onnx.load(str(REPO / "samples" / file_name))
    fold_conv_weight_chains(model)
    calib = CalibOptions(sources=[str(images / CALIB)], preprocess=preset_name, crops=10, project=args.project)
    samples = calibration_set(model, calib)
    chosen = _evenly_spaced(len(samples.inputs), args.samples)
    preset = fit_preset(get_preset(preset_name), ModelRunner.image_input_shape(model))
    choice = load_image_set(find_images([str(images / CHOICE)]), preset, args.choice_views).inputs
    rows = layer_curves(model, samples.inputs[chosen], samples.image_index[chosen], choice,
                        [float(r) for r in args.ratios.split(",")])
    truth, shapes = curves_of(rows, lambda r: r["choice_kl"])
    truth_by_name = {c.name: c for c in truth}
    allocations = {}
    for measure in MEASURES + ("oracle",):
        curves, _ = curves_of(rows, (lambda r: r["choice_kl"]) if measure == "oracle"
                              else (lambda r, m=measure: r["calib"][m]))
        allocation = allocate_ratios(curves, shapes, args.target, "bh")
        entry = {"ratios": allocation.ratios, "calibration_sum": allocation.predicted_total,
                 "choice_sum": float(sum(predicted_loss(truth_by_name[n], np.array([r]))[0]
                                         for n, r in allocation.ratios.items()))}
        if args.whole:
            entry["whole"] = whole_model(model, allocation.ratios, calib,
                                         {"calibration": samples.inputs, "choice": choice})
        allocations[measure] = entry
        print(json.dumps({measure: {k: v for k, v in entry.items() if k != "ratios"}}), flush=True)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python bench/allocation_check.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores available",
              "split": f"curves on {len(chosen)} of {CALIB} x 10 views (refit held out by image); choice {CHOICE} "
                       f"x {args.choice_views} views; evaluation images never read",
              "layers": rows, "allocations": allocations}
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
