"""Accuracy against pruning ratio, per method, with and without calibrated reconstruction (the paper's Fig. 3a
on real weights, but one-shot): every (method, ratio) pair is pruned in memory and measured against the unpruned
model on the evaluation images. Class-score models are measured by top-1 agreement and KL (and top-1 against
labels); maps and sequences (``deprune_onnx.evaluation.output_kind``) by relative L2 error and cosine; every row
carries the error metrics.
"""
from __future__ import annotations

from itertools import product
from typing import Any

import numpy as np
import onnx

from deprune_onnx.dw.planner import DWOptions
from deprune_onnx.evaluation import ModelRunner, evaluate_outputs
from deprune_onnx.evaluation.images import ImageSet
from deprune_onnx.pipeline import CalibOptions, PruneOptions, prune_model
from deprune_onnx.progress import progress


def sweep(model: onnx.ModelProto, images: ImageSet, methods: list[str], ratios: list[float],
          calib: CalibOptions | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The unpruned model's own metrics and one row per (method, ratio, reconstruction) with agreement, KL,
    cosine and top-1 against the labels when the images have them (class scores; None otherwise), and relative
    L2 error, output cosine and max abs error for every output kind."""
    reference_outputs = ModelRunner(model, "reference").run(images.inputs)
    baseline = evaluate_outputs(images, reference_outputs).to_dict()
    rows: list[dict[str, Any]] = []
    runs = list(product(methods, ratios, [None, calib] if calib is not None else [None]))
    for method, ratio, calibration in progress(runs, "sweep", unit="run"):
        work = onnx.ModelProto()
        work.CopyFrom(model)
        result = prune_model(work, PruneOptions(dw=DWOptions(method=method, dw_ratio=ratio), calib=calibration))
        outputs = ModelRunner(work, f"{method}@{ratio}").run(images.inputs)
        evaluation = evaluate_outputs(images, outputs, reference_outputs)
        agreement, errors = evaluation.agreement, evaluation.errors
        rows.append({
            "method": method, "ratio": ratio, "reconstruction": calibration is not None,
            "achieved_ratio": result.report["totals"]["dw_ratio_achieved"],
            "real_dw": result.report["totals"]["real_dw_min"], "output_kind": evaluation.output_kind,
            "agreement": agreement.agreement if agreement else None,
            "kl_mean": agreement.kl_mean if agreement else None,
            "cosine_mean": agreement.cosine_mean if agreement else None,
            "top1": evaluation.labels.top1 if evaluation.labels else None,
            "rel_l2_mean": errors.rel_l2_mean, "output_cosine_mean": errors.cosine_mean,
            "max_abs": errors.max_abs,
        })
    return baseline, rows


def _headline(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(row key, column title, format) of the two metrics a table or plot leads with: agreement and KL for class
    scores, relative L2 error and output cosine for maps and sequences."""
    if all(row["agreement"] is not None for row in rows):
        return [("agreement", "agreement", "percent"), ("kl_mean", "KL", "3f")]
    return [("rel_l2_mean", "rel. L2 error", "4g"), ("output_cosine_mean", "cosine", "5f")]


def _cell(value: float, style: str) -> str:
    return f"{100 * value:.0f}%" if style == "percent" else format(value, "." + style)


def format_sweep_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one line per (method, ratio), plain and reconstructed side by side."""
    has_calib = any(row["reconstruction"] for row in rows)
    has_top1 = any(row["top1"] is not None for row in rows)
    metrics = _headline(rows)
    header = ["method", "DW PR", "achieved"] + [title for _, title, _ in metrics] + (["top-1"] if has_top1 else [])
    if has_calib:
        header += [f"{title} +calib" for _, title, _ in metrics] + (["top-1 +calib"] if has_top1 else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    plain = [row for row in rows if not row["reconstruction"]]
    refit = {(row["method"], row["ratio"]): row for row in rows if row["reconstruction"]}
    for row in plain:
        cells = [row["method"], f"{row['ratio']:g}", f"{row['achieved_ratio']:.3f}"]
        cells += [_cell(row[key], style) for key, _, style in metrics]
        if has_top1:
            cells.append(f"{100 * row['top1']:.0f}%")
        other = refit.get((row["method"], row["ratio"]))
        if has_calib and other is not None:
            cells += [_cell(other[key], style) for key, _, style in metrics]
            if has_top1:
                cells.append(f"{100 * other['top1']:.0f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows: list[dict[str, Any]]) -> bytes:
    """PNG of agreement and KL (class scores; else relative L2 error and cosine) against the achieved DW ratio,
    one colour per method, dashed = reconstructed."""
    from deprune_onnx.report.plots import figure_png, pyplot

    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    (left_key, left_title, left_style), (right_key, right_title, _) = _headline(rows)
    scale = 100 if left_style == "percent" else 1
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for position, method in enumerate(methods):
        for refit in (False, True):
            series = sorted((r for r in rows if r["method"] == method and r["reconstruction"] == refit),
                            key=lambda r: r["ratio"])
            if not series:
                continue
            x = np.array([r["achieved_ratio"] for r in series])
            style = dict(color=colours[position % len(colours)], linestyle="--" if refit else "-", marker="o",
                         label=f"{method}{' + calib' if refit else ''}")
            left.plot(x, [scale * r[left_key] for r in series], **style)
            right.plot(x, [r[right_key] for r in series], **style)
    if left_style == "percent":
        left.set(xlabel="DW pruning ratio (achieved)", ylabel="top-1 agreement with unpruned (%)", ylim=(-3, 103))
        right.set(xlabel="DW pruning ratio (achieved)", ylabel="mean KL(unpruned || pruned)")
        right.set_yscale("symlog", linthresh=0.1)
    else:
        left.set(xlabel="DW pruning ratio (achieved)", ylabel=f"mean {left_title} vs unpruned")
        right.set(xlabel="DW pruning ratio (achieved)", ylabel=f"mean output {right_title} with unpruned")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    figure.tight_layout()
    return figure_png(figure)
