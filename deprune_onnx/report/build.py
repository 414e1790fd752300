"""The pruning report: rendered from the PruningPlan (decisions), the PruneRecord (what happened) and the
analysis, as JSON data and a terminal table.

Predicted speedups use HSR's tile cost model (README.md, "What `prune` does", step 4): a sub-GEMM costs
ceil(K_g/T) tile steps per output pixel, the slowest sub-GEMM sets the layer's time, and the layer's G sub-GEMMs
run side by side, so a layer costs G * H_out * W_out * max_g ceil(K_g/T). This is the paper's model, not a
measurement; measured kernel times live in bench/results/.
In the plugin format a layer the rewrite left a standard Conv (QDQ weights, say) gets no predicted speedup and
counts at its dense cost in the total. Layers or sub-GEMMs that keep no weight are reported as warnings: their
channels output act(bias).
"""
from __future__ import annotations

from dataclasses import asdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from deprune_onnx.analysis import ConvLayer, ModelAnalysis
from deprune_onnx.dw.masks import SUBGEMM_CHANNELS, tile_time
from deprune_onnx.plan import DWLayerPlan, PruningPlan
from deprune_onnx.record import PruneRecord


def output_pixels(layer: ConvLayer) -> int:
    """H_out * W_out of a DW layer (1 when unknown), its per-sub-GEMM weight in the tile cost model."""
    shape = layer.output_shape
    if shape is not None and len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
        return int(shape[2]) * int(shape[3])
    return 1  # unknown spatial size: every layer weighs the same


def dw_layer_row(layer: ConvLayer | None, plan: DWLayerPlan, tile: int, calibration: dict[str, Any] | None = None,
                 sensitivity: dict[str, Any] | None = None) -> dict[str, Any]:
    """One report row: the layer's decision, its achieved ratios and predicted speedup, and what the refit
    (``calibration``) and the allocation (``sensitivity``) recorded for it."""
    kept = np.array(plan.kept_per_subgemm)
    vectors = np.array(plan.vectors_per_subgemm)
    t_dense, t_pruned = tile_time(vectors, tile), tile_time(kept, tile)
    return {
        "name": plan.name,
        "channels": plan.shape[0],
        "kernel": plan.shape[2:],
        "strides": list(layer.strides) if layer else None,
        "subgemms": len(kept),
        "method": plan.method,
        "target_ratio": plan.target_ratio,
        "achieved_ratio": float(1.0 - kept.sum() / vectors.sum()),
        "real_dw": float(np.min((vectors - kept) / vectors)),
        "kept_per_subgemm": plan.kept_per_subgemm,
        "vectors_per_subgemm": plan.vectors_per_subgemm,
        "pattern": plan.pattern,
        "alpha": plan.alpha,
        "alpha_source": plan.alpha_source,
        "eps": plan.eps,
        "beta": plan.beta,
        "hsr_rank": plan.hsr_rank,
        "hsr_damage": plan.hsr_damage,
        "tile_steps_dense": t_dense,
        "tile_steps_pruned": t_pruned,
        "predicted_speedup": (t_dense / t_pruned) if t_pruned else None,
        "weights": int(vectors.sum()),
        "kept_weights": int(kept.sum()),
        "note": plan.note,
        "params": layer.params if layer else int(vectors.sum()),
        "params_kept": (layer.params if layer else int(vectors.sum())) - int(vectors.sum() - kept.sum()),
        "macs": layer.macs if layer else None,
        "macs_kept": int(round(layer.macs * kept.sum() / vectors.sum())) if layer and layer.macs else None,
        "calibration": calibration,
        "sensitivity": sensitivity,
    }


def predicted_dw_speedup(plans: Sequence[DWLayerPlan], analysis: ModelAnalysis, tile: int,
                         dense: set[str] = frozenset()) -> float | None:
    """Model-wide DW speedup of the tile cost model: sum of G * H_out * W_out * max_g ceil(K_g/T), dense over
    pruned (None when nothing is left to run). Layers named in ``dense`` (not rewritten to the sparse op) run
    at their dense cost."""
    layers = analysis.dw_by_name()
    cost_dense = cost_pruned = 0
    for plan in plans:
        layer = layers.get(plan.name)
        scale = len(plan.kept_per_subgemm) * (output_pixels(layer) if layer else 1)
        cost_dense += scale * tile_time(np.array(plan.vectors_per_subgemm), tile)
        kept = plan.vectors_per_subgemm if plan.name in dense else plan.kept_per_subgemm
        cost_pruned += scale * tile_time(np.array(kept), tile)
    return (cost_dense / cost_pruned) if cost_pruned else None


def empty_subgemm_warnings(plan: DWLayerPlan, width: int = SUBGEMM_CHANNELS) -> list[str]:
    """Warnings for a layer, or sub-GEMMs of it, that keep no weight: those channels output act(bias) whatever
    the input (a ratio near 1, or a small sub-GEMM under BWT rounding)."""
    kept = plan.kept_per_subgemm
    if not any(kept):
        return [f"{plan.name}: every weight is pruned, so the layer's output is act(bias) whatever its input"]
    channels = plan.shape[0]
    empty = [g for g, k in enumerate(kept) if k == 0]
    if not empty:
        return []
    spans = ", ".join(f"{g} (channels {g * width}-{min(channels, (g + 1) * width) - 1})"
                      for g in empty)
    return [f"{plan.name}: sub-GEMM(s) {spans} keep no weight, so those channels output act(bias)"]


def partial_subgemm_warnings(pw: dict[str, Any] | None, width: int = SUBGEMM_CHANNELS) -> list[str]:
    """One warning when PW removal left DW layers whose channel count is no longer a multiple of the sub-GEMM
    width: their last sub-GEMM is partial, so its tile is padded and its pruning buys little (a --pw-align that
    is not a multiple of the width does this)."""
    broken = [row for row in (pw or {}).get("dw_layers", [])
              if row["channels_before"] % width == 0 and row["channels_after"] % width]
    if not broken:
        return []
    example = broken[0]
    return [f"PW removal left {len(broken)} DW layer(s) with channel counts that are not multiples of the "
            f"sub-GEMM width {width} (e.g. {example['layer']}: {example['channels_before']} -> "
            f"{example['channels_after']}): their last sub-GEMM is partial; --pw-align {width} keeps them whole"]


def build_report(plan: PruningPlan, analysis: ModelAnalysis, record: PruneRecord | None = None
                 ) -> dict[str, Any]:
    """Report data for ``out.report.json``: per DW layer rows and model totals, the plan's settings, and the
    record's sections (format, dtype, pw, pw_nm24, rewrite, keep_zeros, calibration, allocation,
    target_speedup)."""
    layers = analysis.dw_by_name()
    calibration = record.calibration if record else None
    allocation = record.allocation if record else None
    rows = [dw_layer_row(layers.get(p.name), p, plan.tile,
                         calibration.layers.get(p.name) if calibration else None,
                         allocation.layers.get(p.name) if allocation else None) for p in plan.dw_layers]
    records = record.rewrite if record is not None else None
    nothing_rewritten = records is not None and not any(entry["rewritten"] for entry in records)
    if records is not None:  # plugin format: only a rewritten layer runs the sparse op and can be faster
        rewritten = {entry["layer"] for entry in records if entry["rewritten"]}
        for row in rows:
            row["rewritten"] = row["name"] in rewritten
            if not row["rewritten"]:
                row["tile_steps_pruned"], row["predicted_speedup"] = row["tile_steps_dense"], None
    weights = sum(row["weights"] for row in rows)
    kept = sum(row["kept_weights"] for row in rows)
    speedup = predicted_dw_speedup(plan.dw_layers, analysis, plan.tile,
                                   {row["name"] for row in rows if not row.get("rewritten", True)})
    totals = {
        "dw_layers": len(rows),
        "dw_weights": weights,
        "dw_kept_weights": kept,
        "dw_ratio_target": plan.dw_ratio,
        "dw_ratio_achieved": float(1.0 - kept / weights) if weights else 0.0,
        "real_dw_min": min((row["real_dw"] for row in rows if row["method"] != "none"), default=0.0),
        "dw_pattern": plan.dw_pattern_string() if plan.method == "bh" else None,
        "predicted_dw_speedup": speedup if not nothing_rewritten else None,
        "skipped_layers": [{"name": s.name, "reason": s.reason} for s in analysis.skipped],
        "warnings": [line for p in plan.dw_layers for line in empty_subgemm_warnings(p, plan.subgemm_channels)]
        + partial_subgemm_warnings(record.pw if record else None, plan.subgemm_channels),
    }
    report = {"method": plan.method, "tile": plan.tile, "settings": asdict(plan.settings), "dw_layers": rows,
              "totals": totals, "calibration": calibration.summary() if calibration else None,
              "allocation": allocation.summary if allocation else None}
    if record is not None:
        report.update({"format": record.output_format, "dtype": record.dtype})
        sections = {"pw": record.pw, "pw_nm24": record.pw_nm24, "rewrite": record.rewrite,
                    "format_auto": record.format_auto, "keep_zeros": record.keep_zeros,
                    "target_speedup": record.target_speedup}
        report.update({key: value for key, value in sections.items() if value is not None})
    return report


def short_name(name: str, width: int) -> str:
    """``name`` if it fits ``width`` characters, else '...' and its end (node names differ at the end)."""
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _kept_summary(kept: list[int]) -> str:
    """'64x4,32' for [64, 64, 64, 64, 32]: run-length of equal K values."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(kept) + 1):
        if i == len(kept) or kept[i] != kept[start]:
            count = i - start
            parts.append(f"{kept[start]}x{count}" if count > 1 else str(kept[start]))
            start = i
    return ",".join(parts)


def format_report_table(report: dict[str, Any]) -> str:
    """A readable table of the DW layers and the model totals, for the terminal."""
    header = f"{'DW layer':<40} {'C':>5} {'k':>3} {'s':>3} {'G':>3} {'target':>6} {'PR':>6} {'RealDW':>6} " \
             f"{'pat':>4} {'speedup':>7}  K per sub-GEMM"
    lines = [header, "-" * len(header)]
    for row in report["dw_layers"]:
        stride = "x".join(map(str, row["strides"])) if row["strides"] and row["strides"][0] != row["strides"][1] \
            else str(row["strides"][0] if row["strides"] else "?")
        speedup = f"{row['predicted_speedup']:.2f}x" if row["predicted_speedup"] else \
            "-" if row.get("rewritten") is False else "all"
        lines.append(f"{short_name(row['name'], 40):<40} {row['channels']:>5} {row['kernel'][0]:>3} {stride:>3} "
                     f"{row['subgemms']:>3} {row['target_ratio']:>6.3f} {row['achieved_ratio']:>6.3f} "
                     f"{row['real_dw']:>6.3f} {row['pattern']:>4} {speedup:>7}  "
                     f"{_kept_summary(row['kept_per_subgemm'])}"
                     + (f"  pred. KL {row['sensitivity']['predicted_kl']:.3f}" if row.get("sensitivity") else ""))
    totals = report["totals"]
    lines.append("-" * len(header))
    speedup = totals["predicted_dw_speedup"]
    target = totals["dw_ratio_target"]
    summary = (f"DW: {totals['dw_layers']} layers, PR {totals['dw_ratio_achieved']:.4f} "
               f"(target {f'{target:.4f}' if isinstance(target, float) else target}), "
               f"Real DW {totals['real_dw_min']:.4f}")
    if totals["dw_pattern"]:
        summary += f", DW-Pat. {totals['dw_pattern']}"
        if not any(row["pattern"] in ("o", "u") for row in report["dw_layers"]):
            summary += " (every layer tile-aligned)"
        ranks = sorted({f"{row['hsr_rank']}" + (f" ({row['hsr_damage']['source']})" if row.get("hsr_damage") else "")
                        for row in report["dw_layers"] if row.get("hsr_rank") and row["pattern"] in ("o", "u")})
        if ranks:
            summary += f" (HSR rank: {', '.join(ranks)})"
    summary += f", predicted DW speedup {speedup:.2f}x (tile model, not a measurement)" if speedup else ""
    lines.append(summary)
    target = report.get("target_speedup")
    if target:
        predicted = f"{target['predicted']:.2f}x" if target["predicted"] else "-"
        scope = "DW + PW time" if target.get("pw_time_before") else "DW time"
        lines.append(f"target speedup {target['target']}x of the {scope}: predicted {predicted} "
                     f"({target['model']}; what --target-speedup was planned with)")
    for skipped in totals["skipped_layers"]:
        lines.append(f"skipped {skipped['name']}: {skipped['reason']}")
    lines += [f"warning: {line}" for line in totals.get("warnings", [])]
    lines += _pw_lines(report) + _rewrite_lines(report)
    return "\n".join(lines)


def _pw_lines(report: dict[str, Any]) -> list[str]:
    pw = report.get("pw")
    if not pw:
        return []
    channels, params, macs = pw["pw_channels"], pw["params"], pw["macs"]
    reasons = [group["reason"] for group in pw["groups"] if group.get("reason")]
    out_of_scope = sum(reason.startswith("out of scope") for reason in reasons)
    left = f"{len(reasons) - out_of_scope} group(s) left unpruned (reasons in the report)"
    if out_of_scope:
        left += f", {out_of_scope} outside --pw-scope {pw['scope']}"
    return [f"PW ({pw['scope']}, align {pw['align']}): channels {channels['before']} -> {channels['after']} "
            f"(PR {channels['ratio']:.3f}, target {pw['target_ratio']}), params {params['before']:,} -> "
            f"{params['after']:,}, MACs {macs['before']:,} -> {macs['after']:,}; {left}"]


def _rewrite_lines(report: dict[str, Any]) -> list[str]:
    records = report.get("rewrite")
    if records is None:
        return []
    done = [r for r in records if r["rewritten"]]
    lines = [f"rewrite: {len(done)} DW conv(s) -> DRSparseDepthwiseConv "
             f"({sum(bool(r['activation'] != 'none') for r in done)} with a fused activation)"]
    lines += [f"not rewritten {r['layer']}: {r['reason']}" for r in records if not r["rewritten"]]
    lines += [f"no activation fused into {r['layer']}: {r['no_fusion']}" for r in done if r.get("no_fusion")]
    return lines


def format_calibration(report: dict[str, Any]) -> str:
    """What --calib (and --allocate) did, for the terminal: samples, and the refit residual before/after."""
    calibration = report.get("calibration") or {}
    rows = [row for row in report["dw_layers"] if row.get("calibration")]
    before = np.array([row["calibration"]["residual_before"] for row in rows])
    after = np.array([row["calibration"]["residual_after"] for row in rows])
    lines = [f"calibration: {len(calibration.get('images', []))} images x {calibration.get('views')} views = "
             f"{calibration.get('samples')} samples; refit {len(rows)} DW layers"]
    if rows:
        lines.append(f"  relative output error of the refit layers: mean {before.mean():.4f} -> {after.mean():.4f} "
                     f"(worst {before.max():.4f} -> {after.max():.4f})")
    projections = calibration.get("projections") or []
    if projections:
        from deprune_onnx.recovery.pw_refit import BLOCK_OUTPUT_TARGET

        block_outputs = sum(entry["target"] == BLOCK_OUTPUT_TARGET for entry in projections)
        first = np.array([entry["residual_before"] for entry in projections])
        last = np.array([entry["residual_after"] for entry in projections])
        lines.append(f"  refit {len(projections)} projection PWs right after their DW layers ({block_outputs} to the "
                     f"block output through the residual Add): relative error mean {first.mean():.4f} -> "
                     f"{last.mean():.4f} (off with --no-calib-project)")
    check = calibration.get("model_check")
    if check:
        unit = "mean KL" if check["measure"] == "kl" else "relative L2 error"
        lines.append(f"  whole model on the calibration samples, {unit} to the unpruned model: "
                     f"{check['unrefitted']:.4g} unrefitted -> {check['refitted']:.4g} refitted")
        if check["kept"] != "refit":
            lines.append("warning: the refit made the whole model worse on the very samples it was fitted on, so it "
                         "was undone (the masks stay); try --calib-damp auto, more calibration images, or fine-tuning")
    allocation = report.get("allocation")
    if allocation:
        lines.append(f"  allocation: model-wide target {allocation['target_ratio']}, allocated "
                     f"{allocation['allocated_ratio']:.4f}, predicted KL sum {allocation['predicted_kl_sum']:.4f}")
    lines.append("  check it on other images: deprune-onnx eval OUT.onnx --reference IN.onnx --images DIR")
    return "\n".join(lines)
