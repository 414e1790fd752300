"""``deprune-onnx prune``: compute DEPrune masks and write the pruned model, its report and its plan."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import onnx

from deprune_onnx.cli.image_options import PRESET_NAMES
from deprune_onnx.cli.options import parse_layer_ratios, parse_ratio_list


def sidecar_path(output: Path, suffix: str) -> Path:
    """``out.onnx`` -> ``out<suffix>`` (e.g. ``out.report.json``) in the same folder."""
    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    return output.with_name(stem + suffix)


def _load(input_path: str, drop_initializer_inputs: bool) -> onnx.ModelProto:
    from deprune_onnx.logging_utils import LOGGER, timed_pass
    from deprune_onnx.onnx_io import load_save

    with timed_pass("load"):
        model = load_save.load_model(input_path)
    if drop_initializer_inputs:
        dropped = load_save.drop_initializer_inputs(model)
        LOGGER.info("--drop-initializer-inputs: %d graph input(s) removed: %s", len(dropped), ", ".join(dropped))
    return model


@click.command("prune")
@click.argument("input_path", metavar="IN.onnx", type=click.Path(dir_okay=True))
@click.argument("output_path", metavar="OUT.onnx", type=click.Path(dir_okay=True))
@click.option("--method", "--dw-method", "method", type=click.Choice(["dcp", "b", "bh", "channel", "global"]),
              default="bh", show_default=True,
              help="dcp = DEPrune (DCP); b = DEPrune-B (DCP + balanced workload tuning); "
                   "bh = DEPrune-BH (+ hardware-aware sub-GEMM recalibration to the tile). Baselines at equal "
                   "PR: channel = whole DW channels by l2 norm (zeroed); global = one magnitude ranking across "
                   "all DW layers.")
@click.option("--dw-ratio", type=float, default=0.5, show_default=True,
              help="Target pruning ratio of every DW layer, in [0, 1).")
@click.option("--layer-ratio", "layer_ratios", multiple=True, metavar="NAME=R",
              help="Per-layer ratio; NAME is a DW node name or glob; repeatable, the last match wins.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="DW layers to leave dense; repeatable.")
@click.option("--tile", type=int, default=32, show_default=True, help="GPU tile T along K for HSR alignment.")
@click.option("--hsr-timings", type=click.Path(dir_okay=False),
              help="JSON of measured per-layer HSR speedups (alpha) replacing the tile cost model.")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=True),
              help="Re-apply a saved plan instead of computing masks (method and ratio options are ignored).")
@click.option("--keep-zeros", is_flag=True,
              help="Use the DW weights' existing zeros as the masks (a model fine-tuned with exported masks): "
                   "check them against --method's rules, align them (bh), rewrite; ratio options are ignored.")
@click.option("--plan-out", type=click.Path(dir_okay=False),
              help="Where to write the plan [default: OUT.plan.json].")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Where to write the report [default: OUT.report.json].")
@click.option("--pw-ratio", type=float, default=0.0, show_default=True,
              help="PW filter-pruning ratio in [0, 1): pruned filters are removed from the graph.")
@click.option("--pw-align", type=int, default=32, show_default=True,
              help="Kept PW channel counts are multiples of this (the GPU tile; 8 for small models).")
@click.option("--pw-scope", type=click.Choice(["project", "all"]), default="project", show_default=True,
              help="project = projection PW of each block (paper); all = every PW, expansion too "
                   "(which removes DW channels).")
@click.option("--pw-method", type=click.Choice(["l2", "nm24"]), default="l2", show_default=True,
              help="l2 = filter pruning by l2 norm (with --pw-ratio); nm24 = 2:4 masks on PW weights for "
                   "TensorRT sparse tensor cores (zeros kept, no removal).")
@click.option("--format", "output_format", type=click.Choice(["plugin", "dense"]), default="plugin",
              show_default=True,
              help="plugin = pruned DW convs become the DRSparseDepthwiseConv custom op (compact DR weights, "
                   "TensorRT plugin); dense = standard Conv with masked weights (portable, the reference).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="float16 converts weights, activations and I/O (TensorRT 11 takes precision from the model).")
@click.option("--calib", "calib_sources", multiple=True, metavar="DIR|FILE|GLOB",
              help="Calibration images: refit every pruned DW channel's kept weights and bias by least squares "
                   "so it reproduces the unpruned model (masks unchanged); repeatable.")
@click.option("--calib-n", type=int, metavar="N", help="Use only the first N calibration images (by name).")
@click.option("--calib-preprocess", type=click.Choice(PRESET_NAMES),
              help="Preprocessing preset of the calibration images [default: guessed from the input shape].")
@click.option("--calib-crops", type=int, metavar="V",
              help="Views per calibration image (crops, flips) [default: enough for 64 samples, at most 10].")
@click.option("--calib-damp", type=float, default=0.01, show_default=True,
              help="Ridge damping of the refit, relative to each channel's mean input energy.")
@click.option("--calib-saliency", is_flag=True,
              help="Choose the kept taps by second-order saliency w^2/[H^-1]_pp instead of |w| (same K per "
                   "sub-GEMM, so the DR/tile structure is unchanged).")
@click.option("--refit/--no-refit", default=True, show_default=True,
              help="With --calib: refit the kept weights (--no-refit uses the images for --allocate only).")
@click.option("--allocate", type=click.Choice(["kl"]),
              help="Choose per-layer ratios from measured sensitivity (needs --calib) so the model-wide DW ratio "
                   "is --dw-ratio with the least predicted KL.")
@click.option("--allocate-ratios", default="0.25,0.5,0.75,0.9", show_default=True, metavar="R,R,...",
              help="Ratios at which --allocate measures each layer.")
@click.option("--allocate-samples", type=int, default=16, show_default=True, metavar="N",
              help="Calibration samples --allocate measures on (evenly spaced).")
@click.option("--drop-initializer-inputs", is_flag=True,
              help="Remove initializers from the graph inputs so they are constants and can be pruned (from ONNX "
                   "IR 4 on, an initializer listed as an input can be overridden at run time; the output no "
                   "longer takes those inputs).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (no progress bars).")
@click.option("--verbose", "-v", count=True, help="Log each pass with its time and peak memory; -vv for debug.")
def command(input_path: str, output_path: str, method: str, dw_ratio: float, layer_ratios: tuple[str, ...],
            exclude: tuple[str, ...], tile: int, hsr_timings: str | None, pw_ratio: float, pw_align: int,
            pw_scope: str, pw_method: str, plan_path: str | None, keep_zeros: bool,
            plan_out: str | None, report_path: str | None,
            output_format: str, dtype: str, calib_sources: tuple[str, ...], calib_n: int | None,
            calib_preprocess: str | None, calib_crops: int | None, calib_damp: float, calib_saliency: bool,
            refit: bool, allocate: str | None, allocate_ratios: str, allocate_samples: int,
            drop_initializer_inputs: bool, as_json: bool, quiet: bool, verbose: int) -> None:
    """Prune the depthwise convs of IN.onnx the DEPrune way and write OUT.onnx.

    Writes OUT.onnx, OUT.report.json (every layer: target and achieved PR, Real DW, K per sub-GEMM,
    over/under alignment, predicted speedup) and OUT.plan.json (the masks, re-appliable with --plan).
    IN.onnx is never modified; every output is written atomically.

    \b
    Examples:
      deprune-onnx prune mobilenet_v2.onnx mnv2_bh.onnx --method bh --dw-ratio 0.78
      deprune-onnx prune m.onnx out.onnx --method b --dw-ratio 0.5 --layer-ratio '*conv.1.0*=0.3'
      deprune-onnx prune m.onnx again.onnx --plan out.plan.json
      deprune-onnx prune mobilenet_v2.onnx out.onnx --dw-ratio 0.3 --calib calib_images/
      deprune-onnx prune mobilenet_v2.onnx out.onnx --dw-ratio 0.5 --allocate kl --calib calib_images/
      deprune-onnx prune finetuned.onnx out.onnx --keep-zeros --method bh --format plugin

    --calib refits the kept DW weights and biases (layer by layer, exact per channel, no training);
    --allocate kl measures each DW layer's sensitivity on the calibration images and gives sensitive
    layers (stride-2 ones, usually) lower ratios. Both keep every DCP/BWT/HSR rule and are recorded in
    the plan and the report.
    """
    from deprune_onnx.dw.planner import DWOptions, check_ratio, load_hsr_timings
    from deprune_onnx.logging_utils import QUIET, configure, timed_pass
    from deprune_onnx.onnx_io.load_save import check_output_path, save_model, write_json_atomic
    from deprune_onnx.errors import DepruneError
    from deprune_onnx.pipeline import PruneOptions, PWOptions, prune_model
    from deprune_onnx.recovery.calibration import CalibOptions
    from deprune_onnx.plan import load_plan
    from deprune_onnx.progress import configure_progress
    from deprune_onnx.report.build import format_calibration, format_report_table

    configure(QUIET if quiet else verbose)
    configure_progress(False if quiet else None)
    check_ratio(dw_ratio, "--dw-ratio")
    check_ratio(pw_ratio, "--pw-ratio")
    if keep_zeros and plan_path:
        raise DepruneError("--keep-zeros and --plan: choose one source of masks")
    output = check_output_path(output_path, input_path)
    report_file = check_output_path(report_path or sidecar_path(output, ".report.json"), input_path)
    plan_file = check_output_path(plan_out or sidecar_path(output, ".plan.json"), input_path)
    dw_options = DWOptions(method=method, dw_ratio=dw_ratio, layer_ratios=parse_layer_ratios(layer_ratios),
                           exclude=list(exclude), tile=tile,
                           hsr_alphas=load_hsr_timings(hsr_timings) if hsr_timings else {})
    calib = None
    if calib_sources:
        calib = CalibOptions(sources=list(calib_sources), n=calib_n, preprocess=calib_preprocess,
                             crops=calib_crops, damp=calib_damp, saliency=calib_saliency, refit=refit,
                             allocate=allocate, allocate_ratios=parse_ratio_list(allocate_ratios, "--allocate-ratios"),
                             allocate_samples=allocate_samples)
    elif allocate:
        raise DepruneError("--allocate: needs calibration images, give --calib DIR")
    elif calib_saliency or calib_n is not None or calib_crops is not None:
        raise DepruneError("--calib-n/--calib-crops/--calib-saliency: need --calib DIR")
    if allocate_samples < 1:
        raise DepruneError(f"--allocate-samples {allocate_samples}: must be at least 1")
    plan = load_plan(plan_path) if plan_path else None
    pw_options = PWOptions(ratio=pw_ratio, align=pw_align, scope=pw_scope, method=pw_method)
    options = PruneOptions(dw=dw_options, pw=pw_options, output_format=output_format, dtype=dtype, calib=calib,
                           keep_zeros=keep_zeros)
    # The loaded model goes straight into the pipeline and no reference is kept here: with PW removal and the
    # rewrite working in place, a multi-GB model is held about once (bench/results/prune_speed.md).
    result = prune_model(_load(input_path, drop_initializer_inputs), options, plan)

    with timed_pass("save"):
        save_model(result.model, output)
        write_json_atomic(report_file, result.report)
        write_json_atomic(plan_file, result.plan.to_dict())
    if as_json:
        click.echo(json.dumps(result.report, indent=2, sort_keys=True))
    elif not quiet:
        click.echo(format_report_table(result.report))
        for layer, lines in result.plan.options.get("keep_zeros", {}).get("violations", {}).items():
            click.echo(f"--keep-zeros: {layer}: {'; '.join(lines)}")
        click.echo(f"wrote {output}, {report_file}, {plan_file}")
        if result.plan.calibration:
            click.echo(format_calibration(result.report))
        elif not keep_zeros:
            click.echo("note: one-shot DW pruning costs accuracy (MobileNetV2, BWT at DW PR 0.3: 40-65 top-1 "
                       "points without recovery); recover part of it without training with --calib DIR (and "
                       "--allocate kl), the rest by fine-tuning with the masks fixed ('deprune-onnx finetune', "
                       "or export-masks for your own training code); measure it with "
                       "'deprune-onnx eval OUT.onnx --reference IN.onnx --images DIR'.")
