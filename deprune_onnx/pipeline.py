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
from deprune_onnx.logging_utils import timed_pass
from deprune_onnx.masks import SUBGEMM_CHANNELS
from deprune_onnx.plan import PruningPlan
from deprune_onnx.pw import PWPlan, apply_nm24, apply_pw_plan, plan_pw_pruning, pw_report
from deprune_onnx.report import build_report

OUTPUT_FORMATS = ("dense", "plugin")
DTYPES = ("float32", "float16")


PW_METHODS = ("l2", "nm24")


@dataclass
class PWOptions:
    """PW pruning: ``l2`` filter pruning that removes channels (``ratio`` > 0), or ``nm24`` 2:4 masks."""

    ratio: float = 0.0
    align: int = 32
    scope: str = "project"
    method: str = "l2"


@dataclass
class PruneOptions:
    dw: DWOptions = field(default_factory=DWOptions)
    pw: PWOptions = field(default_factory=PWOptions)
    output_format: str = "plugin"
    dtype: str = "float32"


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


def make_plan(model: onnx.ModelProto, options: PruneOptions, analysis: ModelAnalysis,
              pw_plan: PWPlan | None) -> PruningPlan:
    """Decide every DW mask (on the model after PW removal); pure with respect to the model."""
    return PruningPlan(method=options.dw.method, dw_ratio=options.dw.dw_ratio, tile=options.dw.tile,
                       subgemm_channels=SUBGEMM_CHANNELS, dw_layers=plan_dw_layers(model, analysis, options.dw),
                       pw=pw_plan.to_dict() if pw_plan else None,
                       options={"dw": asdict(options.dw), "pw": asdict(options.pw)})


def _pw_structural(model: onnx.ModelProto, options: PWOptions, plan: PruningPlan | None
                   ) -> tuple[onnx.ModelProto, PWPlan | None]:
    """Remove PW channels first (a saved plan's groups, or l2 filter pruning); DW masks are decided after."""
    if plan is not None:
        pw_plan = PWPlan.from_dict(plan.pw) if plan.pw else None
    elif options.method == "l2" and options.ratio > 0:
        pw_plan = plan_pw_pruning(model, ratio=options.ratio, align=options.align, scope=options.scope)
    else:
        pw_plan = None
    if pw_plan is None or not pw_plan.groups:
        return model, pw_plan
    return apply_pw_plan(model, pw_plan), pw_plan


def prune_model(model: onnx.ModelProto, options: PruneOptions, plan: PruningPlan | None = None
                ) -> PruneResult:
    """Prune ``model`` (in place) by ``options``, or re-apply a saved ``plan`` when one is given."""
    if options.output_format not in OUTPUT_FORMATS:
        raise DepruneError(f"--format '{options.output_format}': expected one of {', '.join(OUTPUT_FORMATS)}")
    if options.dtype not in DTYPES:
        raise DepruneError(f"--dtype '{options.dtype}': expected one of {', '.join(DTYPES)}")
    if options.pw.method not in PW_METHODS:
        raise DepruneError(f"--pw-method '{options.pw.method}': expected one of {', '.join(PW_METHODS)}")
    if plan is not None:
        options.pw = PWOptions(**plan.options.get("pw", {})) if plan.options.get("pw") else PWOptions()
    ensure_unique_node_names(model)
    with timed_pass("analyze"):
        _require_dw_layers(analyze(model))
    original = model
    with timed_pass("pw"):
        model, pw_plan = _pw_structural(model, options.pw, plan)
        analysis = analyze(model)
    if plan is None:
        with timed_pass("plan"):
            plan = make_plan(model, options, analysis, pw_plan)
    with timed_pass("apply"):
        apply_dw_masks(model, plan.dw_layers)
    extra: dict[str, Any] = {"format": options.output_format, "dtype": options.dtype}
    if pw_plan is not None:
        extra["pw"] = pw_report(pw_plan, original, model)
    if options.pw.method == "nm24":
        model, extra["pw_nm24"] = apply_nm24(model, analysis)
    if options.output_format == "plugin":
        with timed_pass("rewrite"):
            model, records = _rewrite(model, plan)
        extra["rewrite"] = records
    if options.dtype == "float16":
        from deprune_onnx.precision import convert_to_float16

        with timed_pass("float16"):
            model = convert_to_float16(model)
    report = build_report(plan, analysis, extra)
    return PruneResult(model, plan, report, analysis)


def _rewrite(model: onnx.ModelProto, plan: PruningPlan) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Every pruned DW conv (excluded layers stay Conv) -> DRSparseDepthwiseConv with the plan's masks."""
    from deprune_onnx.op.rewrite import rewrite_to_plugin

    keep_masks = {layer.name: layer.keep_mask() for layer in plan.dw_layers if layer.method != "none"}
    model, records = rewrite_to_plugin(model, keep_masks, k_tile=plan.tile,
                                       subgemm_channels=plan.subgemm_channels)
    return model, [record.to_dict() for record in records]
