"""The prune pipeline: load -> analyze -> plan -> apply -> (rewrite) -> report, as one library call.

Each step is its own module; this one only chains them, so the CLI, the tests and other tools run exactly the
same sequence. The input ModelProto is modified in place (the caller loaded it from disk; the file is never
touched).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from deprune_onnx.analysis import ModelAnalysis, analyze
from deprune_onnx.apply import apply_dw_masks
from deprune_onnx.dw_planner import DWOptions, plan_dw_layers, resolve_layer_ratios
from deprune_onnx.errors import DepruneError
from deprune_onnx.graph import ensure_unique_node_names
from deprune_onnx.keep_zeros import plan_keep_zeros
from deprune_onnx.logging_utils import timed_pass
from deprune_onnx.masks import SUBGEMM_CHANNELS
from deprune_onnx.plan import PruningPlan
from deprune_onnx.pw import PWPlan, apply_nm24, apply_pw_plan, plan_pw_pruning, pw_report, summarize_model
from deprune_onnx.report import build_report

if TYPE_CHECKING:
    from deprune_onnx.evaluation.images import ImageSet

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


# Without --calib-crops, every calibration image gives enough views for this many samples (at most 10 each).
CALIB_TARGET_SAMPLES = 64
CALIB_MAX_AUTO_VIEWS = 10
# --allocate measures sensitivity on at most this many of the calibration samples (evenly spaced).
DEFAULT_ALLOCATE_SAMPLES = 16


@dataclass
class CalibOptions:
    """--calib and friends: calibration images, and what to do with them (refit, allocation)."""

    sources: list[str]
    n: int | None = None               # use the first N images (sorted by name)
    preprocess: str | None = None      # preset name; None = guess from the input shape
    crops: int | None = None           # views per image; None = enough for CALIB_TARGET_SAMPLES
    damp: float = 0.01
    saliency: bool = False
    refit: bool = True
    allocate: str | None = None        # "kl": sensitivity-aware per-layer ratios
    allocate_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    allocate_samples: int = DEFAULT_ALLOCATE_SAMPLES


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
    reasons = "; ".join(f"{s.name}: {s.reason}" for s in analysis.skipped[:3])
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


def _pw_structural(model: onnx.ModelProto, options: PWOptions, plan: PruningPlan | None
                   ) -> tuple[PWPlan | None, dict[str, Any] | None]:
    """Remove PW channels from ``model`` in place, first (a saved plan's groups, or l2 filter pruning); the DW
    masks are decided afterwards on the reduced model. Returns the PW plan and its report section."""
    if plan is not None:
        pw_plan = PWPlan.from_dict(plan.pw) if plan.pw else None
    elif options.method == "l2" and options.ratio > 0:
        pw_plan = plan_pw_pruning(model, ratio=options.ratio, align=options.align, scope=options.scope)
    else:
        pw_plan = None
    if pw_plan is None:
        return None, None
    before = summarize_model(model)
    if pw_plan.groups:
        apply_pw_plan(model, pw_plan, in_place=True)
    return pw_plan, pw_report(pw_plan, before, model)


def calibration_set(model: onnx.ModelProto, calib: CalibOptions) -> "ImageSet":
    """The preprocessed calibration samples: the first ``n`` images, ``crops`` views each."""
    from deprune_onnx.evaluation.images import find_images, load_image_set, resolve_preset
    from deprune_onnx.evaluation.runner import ModelRunner

    paths = find_images(calib.sources, "--calib")
    if calib.n is not None:
        if calib.n < 1:
            raise DepruneError(f"--calib-n {calib.n}: must be at least 1")
        paths = paths[: calib.n]
    views = calib.crops or min(CALIB_MAX_AUTO_VIEWS, math.ceil(CALIB_TARGET_SAMPLES / len(paths)))
    return load_image_set(paths, resolve_preset(calib.preprocess, ModelRunner.image_input_shape(model)), views)


def _evenly(inputs: np.ndarray, count: int) -> np.ndarray:
    if len(inputs) <= count:
        return inputs
    return inputs[np.linspace(0, len(inputs) - 1, count).round().astype(int)]


def _allocate(model: onnx.ModelProto, analysis: ModelAnalysis, options: PruneOptions, samples: np.ndarray
              ) -> tuple[PruneOptions, dict[str, Any], dict[str, dict]]:
    """Per-layer ratios from measured sensitivity; returns the options to plan with and what to record."""
    from deprune_onnx.allocation import ALLOCATORS, allocate_ratios, measure_sensitivity

    calib = options.calib
    assert calib is not None and calib.allocate is not None
    if calib.allocate not in ALLOCATORS:
        raise DepruneError(f"--allocate '{calib.allocate}': expected one of {', '.join(ALLOCATORS)}")
    if options.dw.method == "global":
        raise DepruneError("--allocate: not available with --method global (that ranking sets every ratio)")
    if options.dw.layer_ratios:
        raise DepruneError("--allocate: chooses every layer's ratio itself; drop --layer-ratio (use --exclude "
                           "to keep layers dense)")
    excluded = {name for name, ratio in resolve_layer_ratios([l.name for l in analysis.dw_layers],
                                                              options.dw).items() if ratio is None}
    names = [layer.name for layer in analysis.dw_layers if layer.name not in excluded]
    inputs = _evenly(samples, calib.allocate_samples)
    curves = measure_sensitivity(model, analysis, options.dw.method, inputs, calib.allocate_ratios,
                                 refit=calib.refit, damp=calib.damp, tile=options.dw.tile, layers=names)
    shapes = {layer.name: (layer.out_channels, 1, *layer.kernel) for layer in analysis.dw_layers}
    allocation = allocate_ratios(curves, shapes, options.dw.dw_ratio, options.dw.method, options.dw.tile)
    why = (f"least total predicted KL (sum over layers, measured alone{' with refit' if calib.refit else ''} "
           f"on {len(inputs)} calibration samples) meeting model-wide DW ratio {options.dw.dw_ratio}")
    per_layer = {curve.name: {"measured_ratios": curve.ratios, "measured_kl": curve.kl,
                              "chosen_ratio": allocation.ratios[curve.name],
                              "predicted_kl": allocation.predicted[curve.name], "why": why} for curve in curves}
    summary = {"method": calib.allocate, "target_ratio": options.dw.dw_ratio,
               "allocated_ratio": allocation.achieved_ratio, "predicted_kl_sum": allocation.predicted_total,
               "samples": int(len(inputs)), "refit": calib.refit, "measured_ratios": list(calib.allocate_ratios)}
    dw = replace(options.dw, layer_ratios=list(allocation.ratios.items()))
    return replace(options, dw=dw), summary, per_layer


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
    if plan is not None:
        options.pw = PWOptions(**plan.options.get("pw", {})) if plan.options.get("pw") else PWOptions()
    ensure_unique_node_names(model)
    with timed_pass("analyze"):
        _require_dw_layers(analyze(model))
    with timed_pass("pw"):
        pw_plan, pw_section = _pw_structural(model, options.pw, plan)
        analysis = analyze(model)
    calib = options.calib
    reference = samples = None
    if calib is not None:
        samples = calibration_set(model, calib)
        # The refit's target: this model before DW pruning (after PW removal, so the DW shapes agree).
        reference = onnx.ModelProto()
        reference.CopyFrom(model)
    if plan is None:
        summary = per_layer = None
        if calib is not None and calib.allocate:
            options, summary, per_layer = _allocate(reference, analysis, options, samples.inputs)
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
        from deprune_onnx.calibration import reconstruct

        with timed_pass("refit"):
            records = reconstruct(model, reference, analysis, plan.dw_layers, samples.inputs, calib.damp,
                                  calib.saliency)
        plan.calibration = {"images": [str(p) for p in samples.paths], "views": samples.views,
                            "samples": int(len(samples.inputs)), "preprocess": samples.preset,
                            "damp": calib.damp, "saliency": calib.saliency, "layers_refit": len(records)}
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
                                       subgemm_channels=plan.subgemm_channels, in_place=True)
    return model, [record.to_dict() for record in records]

