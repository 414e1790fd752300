"""The prune pipeline: load -> analyze -> plan -> apply -> (rewrite) -> report, as one library call.

Each step is its own module; this one only chains them, so the CLI, the tests and other tools run exactly the
same sequence. The input ModelProto is modified in place (the caller loaded it from disk; the file is never
touched).

Every step that changes a model follows one contract: ``step(model, ..., *, in_place=False) -> (model, record)``
(``apply_pw_plan``, ``apply_dw_masks``, ``apply_nm24``, ``reconstruct``, ``rewrite_to_plugin``,
``convert_to_float16``): a copy by default, the model itself with ``in_place=True`` (what this pipeline uses,
so a multi-GB model is held about once), and the step's record, which goes into the PruneRecord.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from deprune_onnx.analysis import ModelAnalysis, analyze
from deprune_onnx.dw.apply import apply_dw_masks
from deprune_onnx.dw.planner import DamageMeasure, plan_dw_layers, plan_steps, ratio_for_speedup
from deprune_onnx.dw.speed import speed_model
from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.folding import fold_conv_weight_chains
from deprune_onnx.onnx_io.graph import ensure_unique_node_names
from deprune_onnx.dw.keep_zeros import plan_keep_zeros
from deprune_onnx.logging_utils import LOGGER, timed_pass
from deprune_onnx.dw.masks import SUBGEMM_CHANNELS
from deprune_onnx.options import (CalibOptions, DWOptions, PruneOptions, PWOptions, check_prune_options,
                                  options_for_plan)
from deprune_onnx.plan import PlanSettings, PruningPlan
from deprune_onnx.record import AllocationRecord, CalibrationRecord, PruneRecord
from deprune_onnx.pw import PWPlan, apply_nm24, apply_pw_plan, plan_pw_pruning
from deprune_onnx.recovery.calibration import allocate_layer_ratios, calibration_set, hsr_damage_measure
from deprune_onnx.report.build import build_report

__all__ = ["CalibOptions", "DWOptions", "PWOptions", "PruneOptions", "PruneResult", "PrunedFiles", "prune_file",
           "prune_model"]


@dataclass
class PruneResult:
    """What ``prune_model`` returns.

    Fields:
        model: the pruned model (the input ModelProto, changed in place, or a new one after float16/rewrite).
        plan: the decisions (PruningPlan, format version 2): what ``--plan`` re-applies.
        record: what happened (PruneRecord): PW/rewrite/nm24 rows, calibration and allocation results.
        report: the report data (report/build.py), rendered from plan, record and analysis.
        analysis: the DW/PW layers of the model the DW masks were planned on (after PW removal).
    """

    model: onnx.ModelProto
    plan: PruningPlan
    report: dict[str, Any]
    analysis: ModelAnalysis
    record: PruneRecord


def _require_dw_layers(analysis: ModelAnalysis) -> None:
    if analysis.dw_layers:
        return
    first = sorted(analysis.skipped, key=lambda s: "DW" not in s.reason and "depthwise" not in s.reason)
    reasons = "; ".join(f"{s.name}: {s.reason}" for s in first[:3])
    detail = f" (skipped: {reasons})" if reasons else ""
    raise DepruneError(f"no depthwise conv layer (Conv with group == input channels) to prune{detail}")


def _settings(options: PruneOptions) -> PlanSettings:
    return PlanSettings(dw=options.dw, pw=options.pw, keep_zeros=options.keep_zeros)


def make_plan(model: onnx.ModelProto, options: PruneOptions, analysis: ModelAnalysis,
              pw_plan: PWPlan | None, damage: DamageMeasure | None = None
              ) -> tuple[PruningPlan, dict[str, Any] | None]:
    """Decide every DW mask (on the model after PW removal); pure with respect to the model. Returns the plan
    and, with ``keep_zeros``, the findings for the record (the violations of the zero pattern). ``damage``: the
    measured damage of candidate masks for ``--hsr-rank damage``/``auto`` (with --calib)."""
    if options.keep_zeros:
        return keep_zeros_plan(model, options, analysis, pw_plan)
    return PruningPlan(method=options.dw.method, dw_ratio=options.dw.dw_ratio, tile=options.dw.tile,
                       subgemm_channels=SUBGEMM_CHANNELS,
                       dw_layers=tuple(plan_dw_layers(model, analysis, options.dw, damage)), pw=pw_plan,
                       settings=_settings(options)), None


def keep_zeros_plan(model: onnx.ModelProto, options: PruneOptions, analysis: ModelAnalysis,
                    pw_plan: PWPlan | None = None) -> tuple[PruningPlan, dict[str, Any]]:
    """The plan of ``--keep-zeros`` (the zero pattern as masks) and the violations found, for the record."""
    found = plan_keep_zeros(model, analysis, options.dw.method, options.dw.tile)
    weights = sum(sum(layer.vectors_per_subgemm) for layer in found.dw_layers)
    zeros = sum(sum(layer.vectors_per_subgemm) - sum(layer.kept_per_subgemm) for layer in found.dw_layers)
    ratio = round(zeros / weights, 6) if weights else 0.0
    dw = DWOptions(method=options.dw.method, dw_ratio=ratio, tile=options.dw.tile)
    plan = PruningPlan(method=options.dw.method, dw_ratio=ratio, tile=options.dw.tile,
                       subgemm_channels=SUBGEMM_CHANNELS, dw_layers=tuple(found.dw_layers), pw=pw_plan,
                       settings=PlanSettings(dw=dw, pw=options.pw, keep_zeros=True))
    return plan, found.to_dict()


def make_keep_zeros_plan(model: onnx.ModelProto, options: PruneOptions, analysis: ModelAnalysis
                         ) -> PruningPlan:
    """The plan of ``--keep-zeros`` alone (fine-tuning's masks when no plan is given)."""
    return keep_zeros_plan(model, options, analysis)[0]


def _pw_structural(model: onnx.ModelProto, options: PWOptions, plan: PruningPlan | None,
                   analysis: ModelAnalysis, calib: CalibOptions | None = None, samples: Any = None
                   ) -> tuple[PWPlan | None, dict[str, Any] | None]:
    """Remove PW channels from ``model`` in place, first (a saved plan's groups, or filter pruning); the DW
    masks are decided afterwards on the reduced model. With calibration ``samples``, channels are ranked by the
    activation energy they feed forward and the 1x1 convs reading reduced tensors are refit by least squares
    (recovery/pw_refit.py). Returns the PW plan and its report section."""
    energy = None
    if plan is not None:
        pw_plan = plan.pw
    elif options.method == "l2" and options.ratio > 0:
        if samples is not None:
            from deprune_onnx.recovery.pw_refit import channel_energy

            with timed_pass("pw energy"):
                energy = channel_energy(model, samples.inputs)
        pw_plan = plan_pw_pruning(model, ratio=options.ratio, align=options.align, scope=options.scope,
                                  analysis=analysis, energy=energy)
    else:
        pw_plan = None
    if pw_plan is None:
        return None, None
    original = None
    if pw_plan.groups and samples is not None and calib is not None and calib.refit:
        original = onnx.ModelProto()
        original.CopyFrom(model)
    _, section = apply_pw_plan(model, pw_plan, in_place=True)
    if original is not None:
        from deprune_onnx.recovery.pw_refit import refit_pw_readers

        with timed_pass("pw refit"):
            section["refit"] = refit_pw_readers(model, original, pw_plan, samples.inputs, calib.measure_damp)
    return pw_plan, section


def prune_model(model: onnx.ModelProto, options: PruneOptions, plan: PruningPlan | None = None) -> PruneResult:
    """Prune ``model`` (in place) by ``options``, or re-apply a saved ``plan`` when one is given.

    With ``options.calib``: ``--allocate`` chooses per-layer ratios from measured sensitivity before planning,
    and the refit (``reconstruct``) adjusts the kept DW weights and biases after the masks are applied.
    The sensitivity and refit loops report through ``deprune_onnx.progress`` (bars on a terminal only).
    Errors: OptionError (options.check_prune_options) before the model is touched; DepruneError for a model
    without DW layers or one the plan does not fit.
    """
    check_prune_options(options, plan_given=plan is not None)
    if plan is not None:
        options = options_for_plan(options, plan)
    record = PruneRecord(output_format=options.output_format, dtype=options.dtype)
    ensure_unique_node_names(model)
    with timed_pass("analyze"):
        fold_conv_weight_chains(model)
        analysis = analyze(model)
    _require_dw_layers(analysis)
    calib = options.calib
    reference = samples = None
    one_d = [layer.name for layer in analysis.dw_layers if layer.spatial_dims == 1]
    if calib is not None and one_d:
        raise DepruneError(f"--calib: 1-D DW conv '{one_d[0]}': the refit and --allocate handle 2-D DW convs "
                           "only; prune this model without --calib")
    if calib is not None:  # the image input is the same before and after PW removal
        samples = calibration_set(model, calib)
    unreduced = analysis
    with timed_pass("pw"):
        pw_plan, record.pw = _pw_structural(model, options.pw, plan, analysis, calib, samples)
        if pw_plan is not None and pw_plan.groups:
            analysis = analyze(model)  # channels were removed: DW masks are planned on the reduced model
    if calib is not None:
        # The refit's target: this model before DW pruning (after PW removal, so the DW shapes agree).
        reference = onnx.ModelProto()
        reference.CopyFrom(model)
    speed = None
    if plan is None:
        if options.dw.target_speedup is not None:
            pw_removed = pw_plan is not None and bool(pw_plan.groups)
            speed = speed_model(analysis, options.dw.tile, options.dw.layer_timings, options.dtype,
                                (unreduced.pw_layers, analysis.pw_layers) if pw_removed else None,
                                unreduced.dw_layers)
        if options.dw.target_speedup is not None and not (calib is not None and calib.allocate):
            with timed_pass("target speedup"):
                ratio = ratio_for_speedup(model, analysis, options.dw, speed)
            options = replace(options, dw=replace(options.dw, dw_ratio=ratio))
        if calib is not None and calib.allocate:
            layer_ratios, summary, per_layer = allocate_layer_ratios(reference, analysis, options.dw, calib,
                                                                     samples.inputs, samples.image_index, speed)
            record.allocation = AllocationRecord(summary, per_layer)
            options = replace(options, dw=replace(options.dw, layer_ratios=layer_ratios))
        damage = None
        if calib is not None and options.dw.method == "bh" and options.dw.hsr_rank in ("auto", "damage"):
            damage = hsr_damage_measure(reference, analysis, calib, samples.inputs)
        with timed_pass("plan"):
            plan, record.keep_zeros = make_plan(model, options, analysis, pw_plan, damage)
        if speed is not None:
            record.target_speedup = {"target": options.dw.target_speedup,
                                     "predicted": speed.speedup(plan_steps(plan.dw_layers, plan.tile)),
                                     **speed.summary()}
    with timed_pass("apply"):
        model, _ = apply_dw_masks(model, plan.dw_layers, in_place=True)
    if options.pw.method == "nm24":  # before the refit: it fits the model as written, and keeps the 2:4 zeros
        model, record.pw_nm24 = apply_nm24(model, analysis, in_place=True)
    if calib is not None and calib.refit:
        from deprune_onnx.recovery.model_check import check_refit
        from deprune_onnx.recovery.refit import reconstruct

        unrefitted, unrefitted_plan = onnx.ModelProto(), plan
        unrefitted.CopyFrom(model)
        projection_refit = None
        if calib.refits_projections:
            from deprune_onnx.recovery.pw_refit import ProjectionRefit

            projection_refit = ProjectionRefit(reference, analysis)
        with timed_pass("refit"):
            model, refit = reconstruct(model, reference, analysis, plan.dw_layers, samples.inputs, calib.damp,
                                       calib.saliency, in_place=True, groups=samples.image_index,
                                       projections=projection_refit)
        refits = refit.layers
        plan = plan.with_masks(refit.masks)  # --calib-saliency chose other taps (same K per sub-GEMM)
        projections = None if projection_refit is None else projection_refit.records
        with timed_pass("model check"):
            check = check_refit(reference, unrefitted, model, samples.inputs)
        if not check.keep_refit:  # worse on the samples it was fitted on: undo it (recovery/model_check.py)
            model, plan = unrefitted, unrefitted_plan
            for entry in refits:
                entry.update(refit=False, note="undone: the refit made the whole model worse on the calibration "
                                               "samples")
        record.calibration = CalibrationRecord(
            images=[str(p) for p in samples.paths], views=samples.views, samples=int(len(samples.inputs)),
            preprocess=samples.preset, damp="auto" if calib.damp is None else calib.damp, saliency=calib.saliency,
            layers_refit=sum(bool(entry["refit"]) for entry in refits),
            projections=projections if check.keep_refit else None, model_check=check.to_dict(),
            layers={entry.pop("layer"): entry for entry in refits})
    if options.output_format != "dense":
        chosen = None
        if options.output_format == "auto":
            from deprune_onnx.trt.layer_choice import decide_rewrites

            record.format_auto = [d.to_dict() for d in decide_rewrites(plan.dw_layers, options.timings,
                                                                         options.dtype)]
            chosen = {d["layer"] for d in record.format_auto if d["rewrite"]}
        with timed_pass("rewrite"):
            model, record.rewrite = _rewrite(model, plan, chosen)
    if options.dtype == "float16":
        from deprune_onnx.onnx_io.float16 import convert_to_float16

        with timed_pass("float16"):
            model, _ = convert_to_float16(model)
    report = build_report(plan, analysis, record)
    return PruneResult(model, plan, report, analysis, record)


def _rewrite(model: onnx.ModelProto, plan: PruningPlan, chosen: set[str] | None = None
             ) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Every pruned DW conv (with ``chosen``, only those: --format auto) -> DRSparseDepthwiseConv with the plan's
    masks. Excluded layers, and layers whose mask keeps every weight (ratio 0, e.g. chosen by --allocate), stay
    standard Convs: the sparse op only pays off where taps are skipped."""
    from deprune_onnx.op.rewrite import RewriteRecord, rewrite_to_plugin

    keep_masks = {layer.name: layer.keep_mask() for layer in plan.dw_layers
                  if layer.method != "none" and (chosen is None or layer.name in chosen)}
    dense = [name for name, keep in keep_masks.items() if keep.all()]
    for name in dense:
        del keep_masks[name]
    model, records = rewrite_to_plugin(model, keep_masks, k_tile=plan.tile,
                                       subgemm_channels=plan.subgemm_channels, in_place=True)
    records += [RewriteRecord(name, False, "nothing pruned (the mask keeps every weight): left as a standard Conv")
                for name in dense]
    order = {layer.name: position for position, layer in enumerate(plan.dw_layers)}
    records.sort(key=lambda record: order.get(record.layer, len(order)))
    return model, [record.to_dict() for record in records]


@dataclass
class PrunedFiles:
    """What ``prune_file`` did.

    Fields:
        result: the PruneResult (model, plan, record, report, analysis).
        model_path / report_path / plan_path: the three files written (pruned model, report JSON, plan JSON).
    """

    result: PruneResult
    model_path: Path
    report_path: Path
    plan_path: Path


def prune_file(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], options: PruneOptions,
               plan_path: str | os.PathLike[str] | None = None, report_path: str | os.PathLike[str] | None = None,
               plan_out: str | os.PathLike[str] | None = None, drop_initializer_inputs: bool = False
               ) -> PrunedFiles:
    """``deprune-onnx prune`` as one call: check the options and output paths, load, prune, write.

    Writes the pruned model to ``output_path``, the report to ``report_path`` (default ``OUT.report.json``)
    and the plan to ``plan_out`` (default ``OUT.plan.json``), each atomically; ``plan_path`` re-applies a
    saved plan; ``drop_initializer_inputs`` removes initializers from the graph inputs after loading (at IR >= 4
    they are overridable, so their weights are not constants). The input is never modified. Every check that
    needs no model runs before the model is loaded.
    Errors: OptionError (bad options), DepruneError (bad files, a model the tool cannot prune).
    """
    from deprune_onnx.onnx_io.load_save import (check_output_path, load_model, save_model, sidecar_path,
                                                write_json_atomic)
    from deprune_onnx.onnx_io import load_save
    from deprune_onnx.plan import load_plan

    check_prune_options(options, plan_given=plan_path is not None)
    output = check_output_path(output_path, input_path)
    report_file = check_output_path(report_path or sidecar_path(output, ".report.json"), input_path)
    plan_file = check_output_path(plan_out or sidecar_path(output, ".plan.json"), input_path)
    plan = load_plan(plan_path) if plan_path else None

    def load() -> onnx.ModelProto:
        with timed_pass("load"):
            model = load_model(input_path)
        if drop_initializer_inputs:  # IR >= 4: such inputs are overridable, so their weights are not constants
            dropped = load_save.drop_initializer_inputs(model)
            LOGGER.info("--drop-initializer-inputs: %d graph input(s) removed: %s", len(dropped), ", ".join(dropped))
        return model

    # The loaded model goes straight into the pipeline and no reference is kept here: with PW removal and the
    # rewrite working in place, a multi-GB model is held about once (bench/results/prune_speed.md).
    result = prune_model(load(), options, plan)
    with timed_pass("save"):
        save_model(result.model, output)
        write_json_atomic(report_file, result.report)
        write_json_atomic(plan_file, result.plan.to_dict())
    return PrunedFiles(result, output, report_file, plan_file)
