"""The prune pipeline: load -> analyze -> plan -> apply -> (rewrite) -> report, as one library call.

Each step is its own module; this one only chains them, so the CLI, the tests and other tools run exactly the
same sequence. The input ModelProto is modified in place (the caller loaded it from disk; the file is never
touched).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import onnx

from deprune_onnx.analysis import ModelAnalysis, analyze
from deprune_onnx.dw.apply import apply_dw_masks
from deprune_onnx.dw.planner import DWOptions, plan_dw_layers
from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.folding import fold_conv_weight_chains
from deprune_onnx.onnx_io.graph import ensure_unique_node_names
from deprune_onnx.dw.keep_zeros import plan_keep_zeros
from deprune_onnx.logging_utils import timed_pass
from deprune_onnx.dw.masks import SUBGEMM_CHANNELS
from deprune_onnx.plan import PruningPlan
from deprune_onnx.pw import PWPlan, apply_nm24, apply_pw_plan, plan_pw_pruning, pw_report, summarize_model
from deprune_onnx.recovery.calibration import CalibOptions, allocate_layer_ratios, calibration_set
from deprune_onnx.report.build import build_report

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
    calib: CalibOptions | None = None
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
    first = sorted(analysis.skipped, key=lambda s: "DW" not in s.reason and "depthwise" not in s.reason)
    reasons = "; ".join(f"{s.name}: {s.reason}" for s in first[:3])
    detail = f" (skipped: {reasons})" if reasons else ""
    raise DepruneError(f"no depthwise conv layer (Conv with group == input channels) to prune{detail}")


def make_plan(model: onnx.ModelProto, options: PruneOptions, analysis: ModelAnalysis,
              pw_plan: PWPlan | None) -> PruningPlan:
    """Decide every DW mask (on the model after PW removal); pure with respect to the model."""
    if options.keep_zeros:
        plan = make_keep_zeros_plan(model, options, analysis)
        plan.pw = pw_plan.to_dict() if pw_plan else None
        plan.options["pw"] = asdict(options.pw)
        return plan
    return PruningPlan(method=options.dw.method, dw_ratio=options.dw.dw_ratio, tile=options.dw.tile,
                       subgemm_channels=SUBGEMM_CHANNELS, dw_layers=plan_dw_layers(model, analysis, options.dw),
                       pw=pw_plan.to_dict() if pw_plan else None,
                       options={"dw": asdict(options.dw), "pw": asdict(options.pw)})


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


def _pw_structural(model: onnx.ModelProto, options: PWOptions, plan: PruningPlan | None,
                   analysis: ModelAnalysis) -> tuple[PWPlan | None, dict[str, Any] | None]:
    """Remove PW channels from ``model`` in place, first (a saved plan's groups, or l2 filter pruning); the DW
    masks are decided afterwards on the reduced model. Returns the PW plan and its report section."""
    if plan is not None:
        pw_plan = PWPlan.from_dict(plan.pw) if plan.pw else None
    elif options.method == "l2" and options.ratio > 0:
        pw_plan = plan_pw_pruning(model, ratio=options.ratio, align=options.align, scope=options.scope,
                                  analysis=analysis)
    else:
        pw_plan = None
    if pw_plan is None:
        return None, None
    before = summarize_model(model)
    if pw_plan.groups:
        apply_pw_plan(model, pw_plan, in_place=True)
    return pw_plan, pw_report(pw_plan, before, model)


def prune_model(model: onnx.ModelProto, options: PruneOptions, plan: PruningPlan | None = None) -> PruneResult:
    """Prune ``model`` (in place) by ``options``, or re-apply a saved ``plan`` when one is given.

    With ``options.calib``: ``--allocate`` chooses per-layer ratios from measured sensitivity before planning,
    and the refit (``reconstruct``) adjusts the kept DW weights and biases after the masks are applied.
    The sensitivity and refit loops report through ``deprune_onnx.progress`` (bars on a terminal only).
    """
    if options.output_format not in OUTPUT_FORMATS:
        raise DepruneError(f"--format '{options.output_format}': expected one of {', '.join(OUTPUT_FORMATS)}")
    if options.dtype not in DTYPES:
        raise DepruneError(f"--dtype '{options.dtype}': expected one of {', '.join(DTYPES)}")
    if options.pw.method not in PW_METHODS:
        raise DepruneError(f"--pw-method '{options.pw.method}': expected one of {', '.join(PW_METHODS)}")
    if plan is not None:  # a saved plan brings its own PW options (nm24 is re-applied, not recorded as groups)
        options = replace(options, pw=PWOptions(**plan.options["pw"]) if plan.options.get("pw") else PWOptions())
    ensure_unique_node_names(model)
    with timed_pass("analyze"):
        fold_conv_weight_chains(model)
        analysis = analyze(model)
    _require_dw_layers(analysis)
    with timed_pass("pw"):
        pw_plan, pw_section = _pw_structural(model, options.pw, plan, analysis)
        if pw_plan is not None and pw_plan.groups:
            analysis = analyze(model)  # channels were removed: DW masks are planned on the reduced model
    calib = options.calib
    reference = samples = None
    one_d = [layer.name for layer in analysis.dw_layers if layer.spatial_dims == 1]
    if calib is not None and one_d:
        raise DepruneError(f"--calib: 1-D DW conv '{one_d[0]}': the refit and --allocate handle 2-D DW convs "
                           "only; prune this model without --calib")
    if calib is not None:
        samples = calibration_set(model, calib)
        # The refit's target: this model before DW pruning (after PW removal, so the DW shapes agree).
        reference = onnx.ModelProto()
        reference.CopyFrom(model)
    if plan is None:
        summary = per_layer = None
        if calib is not None and calib.allocate:
            layer_ratios, summary, per_layer = allocate_layer_ratios(reference, analysis, options.dw, calib,
                                                                     samples.inputs)
            options = replace(options, dw=replace(options.dw, layer_ratios=layer_ratios))
        with timed_pass("plan"):
            plan = make_plan(model, options, analysis, pw_plan)
        if summary is not None:
            plan.allocation = summary
            for layer in plan.dw_layers:
                layer.sensitivity = per_layer.get(layer.name)
    elif calib is not None and calib.allocate:
        raise DepruneError("--allocate: cannot be combined with --plan (the plan already fixes every ratio)")
    with timed_pass("apply"):
        apply_dw_masks(model, plan.dw_layers)
    if calib is not None and calib.refit:
        from deprune_onnx.recovery.refit import reconstruct

        with timed_pass("refit"):
            refits = reconstruct(model, reference, analysis, plan.dw_layers, samples.inputs, calib.damp,
                                 calib.saliency)
        plan.calibration = {"images": [str(p) for p in samples.paths], "views": samples.views,
                            "samples": int(len(samples.inputs)), "preprocess": samples.preset,
                            "damp": calib.damp, "saliency": calib.saliency, "layers_refit": len(refits)}
    extra: dict[str, Any] = {"format": options.output_format, "dtype": options.dtype}
    if pw_section is not None:
        extra["pw"] = pw_section
    if options.pw.method == "nm24":
        model, extra["pw_nm24"] = apply_nm24(model, analysis)
    if options.output_format == "plugin":
        with timed_pass("rewrite"):
            model, records = _rewrite(model, plan)
        extra["rewrite"] = records
    if options.dtype == "float16":
        from deprune_onnx.onnx_io.float16 import convert_to_float16

        with timed_pass("float16"):
            model = convert_to_float16(model)
    report = build_report(plan, analysis, extra)
    return PruneResult(model, plan, report, analysis)


def _rewrite(model: onnx.ModelProto, plan: PruningPlan) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Every pruned DW conv (excluded layers stay Conv) -> DRSparseDepthwiseConv with the plan's masks."""
    from deprune_onnx.op.rewrite import rewrite_to_plugin

    keep_masks = {layer.name: layer.keep_mask() for layer in plan.dw_layers if layer.method != "none"}
    model, records = rewrite_to_plugin(model, keep_masks, k_tile=plan.tile,
                                       subgemm_channels=plan.subgemm_channels, in_place=True)
    return model, [record.to_dict() for record in records]

