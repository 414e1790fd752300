"""The prune pipeline: load -> analyze -> plan -> apply -> (rewrite) -> report, as one library call.

Each step is its own module; this one only chains them, so the CLI, the tests and other tools run exactly the
same sequence. The input ModelProto is modified in place (the caller loaded it from disk; the file is never
touched).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from deprune_onnx.analysis import ModelAnalysis, analyze
from deprune_onnx.apply import apply_dw_masks
from deprune_onnx.dw_planner import DWOptions, plan_dw_layers
from deprune_onnx.errors import DepruneError
from deprune_onnx.graph import ensure_unique_node_names
from deprune_onnx.keep_zeros import plan_keep_zeros
from deprune_onnx.masks import SUBGEMM_CHANNELS
from deprune_onnx.plan import PruningPlan
from deprune_onnx.report import build_report

OUTPUT_FORMATS = ("dense", "plugin")


@dataclass
class PruneOptions:
    dw: DWOptions = field(default_factory=DWOptions)
    output_format: str = "dense"
    keep_zeros: bool = False  # masks = the input's DW zero pattern, checked and aligned (keep_zeros.py)


@dataclass
class PruneResult:
    model: onnx.ModelProto
    plan: PruningPlan
    report: dict[str, Any]
    analysis: ModelAnalysis


def _require_dw_layers(analysis: ModelAnalysis) -> None:
    if analysis.dw_layers:
        return
    reasons = "; ".join(f"{s.name}: {s.reason}" for s in analysis.skipped[:3])
    detail = f" (skipped: {reasons})" if reasons else ""
    raise DepruneError(f"no depthwise conv layer (Conv with group == input channels) to prune{detail}")


def make_plan(model: onnx.ModelProto, options: PruneOptions, analysis: ModelAnalysis) -> PruningPlan:
    """Decide every mask; pure with respect to the model."""
    if options.keep_zeros:
        return make_keep_zeros_plan(model, options, analysis)
    return PruningPlan(method=options.dw.method, dw_ratio=options.dw.dw_ratio, tile=options.dw.tile,
                       subgemm_channels=SUBGEMM_CHANNELS, dw_layers=plan_dw_layers(model, analysis, options.dw),
                       options={"dw": asdict(options.dw)})


def make_keep_zeros_plan(model: onnx.ModelProto, options: PruneOptions, analysis: ModelAnalysis
                         ) -> PruningPlan:
    """The plan of ``--keep-zeros``: the zero pattern as masks; the violations found go into plan.options."""
    found = plan_keep_zeros(model, analysis, options.dw.method, options.dw.tile)
    weights = sum(sum(layer.vectors_per_subgemm) for layer in found.dw_layers)
    zeros = sum(sum(layer.vectors_per_subgemm) - sum(layer.kept_per_subgemm) for layer in found.dw_layers)
    return PruningPlan(method=options.dw.method, dw_ratio=round(zeros / weights, 6) if weights else 0.0,
                       tile=options.dw.tile, subgemm_channels=SUBGEMM_CHANNELS, dw_layers=found.dw_layers,
                       options={"keep_zeros": found.to_dict(),
                                "dw": {"method": options.dw.method, "tile": options.dw.tile}})


def prune_model(model: onnx.ModelProto, options: PruneOptions, plan: PruningPlan | None = None
                ) -> PruneResult:
    """Prune ``model`` (in place) by ``options``, or re-apply a saved ``plan`` when one is given."""
    if options.output_format not in OUTPUT_FORMATS:
        raise DepruneError(f"--format '{options.output_format}': expected one of {', '.join(OUTPUT_FORMATS)}")
    if options.output_format == "plugin":
        raise DepruneError("--format plugin: the DRSparseDepthwiseConv rewrite is not available in this "
                           "version yet; use --format dense")
    ensure_unique_node_names(model)
    analysis = analyze(model)
    _require_dw_layers(analysis)
    if plan is None:
        plan = make_plan(model, options, analysis)
    apply_dw_masks(model, plan.dw_layers)
    report = build_report(plan, analysis, {"format": options.output_format})
    return PruneResult(model, plan, report, analysis)
