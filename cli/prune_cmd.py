"""``deprune-onnx prune``: compute DEPrune masks and write the pruned model, its report and its plan."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from deprune_onnx.cli.image_options import preprocessing_options
from deprune_onnx.cli.options import parse_layer_ratios, parse_ratio_list
from deprune_onnx.options import ALLOCATORS, DEFAULT_ALLOCATE_RATIOS, DEFAULT_ALLOCATE_SAMPLES, DTYPES, DW_METHODS
from deprune_onnx.options import OUTPUT_FORMATS, PW_METHODS, PW_SCOPES
from deprune_onnx.op.spec import K_TILE

if TYPE_CHECKING:
    from deprune_onnx.evaluation.images import PreprocessOptions
    from deprune_onnx.pipeline import PrunedFiles


def _parse_damp(value: str) -> float | None:
    """--calib-damp: a number, or 'auto' (None: cross-validated per layer)."""
    if value.strip().lower() == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"'{value}': expected a number or auto", param_hint="'--calib-damp'") from None


@click.command("prune")
@click.argument("input_path", metavar="IN.onnx", type=click.Path(dir_okay=True))
@click.argument("output_path", metavar="OUT.onnx", type=click.Path(dir_okay=True))
@click.option("--method", "--dw-method", "method", type=click.Choice(DW_METHODS),
              default="bh", show_default=True,
              help="dcp = DEPrune (DCP); b = DEPrune-B (DCP + balanced workload tuning); "
                   "bh = DEPrune-BH (+ hardware-aware sub-GEMM recalibration to the tile). Baselines at equal "
                   "PR: channel = whole DW channels by l2 norm (zeroed); global = one magnitude ranking across "
                   "all DW layers.")
@click.option("--dw-ratio", type=float, default=0.5, show_default=True,
              help="Target pruning ratio of every DW layer, in [0, 1).")
@click.option("--target-speedup", type=float, metavar="X",
              help="Instead of --dw-ratio: the predicted speedup to reach, e.g. 1.5: of the DW layers, or of the "
                   "DSConv blocks (DW + PW time, PW by a FLOPs/bytes roofline) when --pw-ratio removes PW "
                   "channels; DW times from the tile cost model, or measured with --hsr-timings TUNE.json. With "
                   "--allocate kl the per-layer ratios with the least predicted KL that reach it, else the least "
                   "uniform ratio that does.")
@click.option("--layer-ratio", "layer_ratios", multiple=True, metavar="NAME=R",
              help="Per-layer ratio; NAME is a DW node name or glob; repeatable, the last match wins.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="DW layers to leave dense; repeatable.")
@click.option("--tile", type=int, default=K_TILE, show_default=True, help="GPU tile T along K for HSR alignment.")
@click.option("--hsr-timings", type=click.Path(dir_okay=False),
              help="JSON of measured per-layer HSR speedups (alpha) replacing the tile cost model in the HSR "
                   "rank, or a `deprune-onnx tune` timings file, whose measured per-layer times --target-speedup "
                   "then predicts with.")
@click.option("--hsr-rank", type=click.Choice(["auto", "beta", "damage"]), default="auto", show_default=True,
              help="How bh picks over-/under-aligned layers: beta = the paper's alpha/eps; damage = speed gained "
                   "per unit of expected damage (measured KL with --calib, relative weight energy removed "
                   "without), so sensitive layers are under-aligned; auto = damage with --calib, beta without.")
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
@click.option("--pw-scope", type=click.Choice(PW_SCOPES), default="project", show_default=True,
              help="project = projection PW of each block (paper); all = every PW, expansion too "
                   "(which removes DW channels).")
@click.option("--pw-method", type=click.Choice(PW_METHODS), default="l2", show_default=True,
              help="l2 = filter pruning by l2 norm (with --pw-ratio); nm24 = 2:4 masks on PW weights for "
                   "TensorRT sparse tensor cores (zeros kept, no removal).")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS), default="plugin",
              show_default=True,
              help="plugin = pruned DW convs become the DRSparseDepthwiseConv custom op (compact DR weights, "
                   "TensorRT plugin); dense = standard Conv with masked weights (portable, the reference); auto = "
                   "the custom op only where --timings measured it faster than the native conv.")
@click.option("--timings", "timings_path", type=click.Path(dir_okay=False),
              help="Timings file of `deprune-onnx tune` (GPU) that --format auto decides from.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="float16 converts weights, activations and I/O (TensorRT 11 takes precision from the model).")
@click.option("--calib", "calib_sources", multiple=True, metavar="DIR|FILE|GLOB",
              help="Calibration images: refit every pruned DW channel's kept weights and bias, and each pruned "
                   "block's projection PW weights and biases, by least squares so they reproduce the unpruned "
                   "model (masks and zeros unchanged); with --pw-ratio also the 1x1 convs reading reduced "
                   "tensors; repeatable.")
@click.option("--calib-n", type=int, metavar="N", help="Use only the first N calibration images (by name).")
@preprocessing_options(prefix="--calib-", dest="calib_preprocessing")
@click.option("--calib-crops", type=int, metavar="V",
              help="Views per calibration image (crops, flips) [default: enough for 64 samples, at most 10].")
@click.option("--calib-damp", default="0.01", show_default=True, metavar="X|auto",
              help="Ridge damping of the refit, relative to each channel's mean input energy; auto = chosen per "
                   "layer by cross-validation over held-out calibration images, and a layer whose held-out "
                   "residual the refit does not lower keeps its unrefitted weights.")
@click.option("--calib-saliency", is_flag=True,
              help="Choose the kept taps by second-order saliency w^2/[H^-1]_pp instead of |w| (same K per "
                   "sub-GEMM, so the DR/tile structure is unchanged).")
@click.option("--calib-project/--no-calib-project", default=None,
              help="With --calib (on by default with the refit): refit each pruned DW layer's projection PW (1x1) "
                   "right after the layer, by damped least squares, to reproduce the block's output; "
                   "--no-calib-project refits the DW layers only (docs/accuracy.md).")
@click.option("--refit/--no-refit", default=True, show_default=True,
              help="With --calib: refit the kept weights (--no-refit uses the images for --allocate only).")
@click.option("--allocate", type=click.Choice(ALLOCATORS),
              help="Choose per-layer ratios from measured sensitivity (needs --calib) so the model-wide DW ratio "
                   "is --dw-ratio with the least predicted KL.")
@click.option("--allocate-ratios", default=",".join(map(str, DEFAULT_ALLOCATE_RATIOS)), show_default=True,
              metavar="R,R,...",
              help="Ratios at which --allocate measures each layer.")
@click.option("--allocate-samples", type=int, default=DEFAULT_ALLOCATE_SAMPLES, show_default=True, metavar="N",
              help="Calibration samples --allocate measures on (evenly spaced).")
@click.option("--drop-initializer-inputs", is_flag=True,
              help="Remove initializers from the graph inputs so they are constants and can be pruned (from ONNX "
                   "IR 4 on, an initializer listed as an input can be overridden at run time; the output no "
                   "longer takes those inputs).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (no progress bars).")
@click.option("--verbose", "-v", count=True, help="Log each pass with its time and peak memory; -vv for debug.")
def command(input_path: str, output_path: str, method: str, dw_ratio: float, target_speedup: float | None,
            layer_ratios: tuple[str, ...],
            exclude: tuple[str, ...], tile: int, hsr_timings: str | None, hsr_rank: str, pw_ratio: float, pw_align: int,
            pw_scope: str, pw_method: str, plan_path: str | None, keep_zeros: bool,
            plan_out: str | None, report_path: str | None,
            output_format: str, timings_path: str | None, dtype: str, calib_sources: tuple[str, ...],
            calib_n: int | None,
            calib_preprocessing: PreprocessOptions, calib_crops: int | None, calib_damp: str, calib_saliency: bool,
            calib_project: bool | None,
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

    --calib refits the kept DW weights and biases (layer by layer, exact per channel, no training) and,
    right after each pruned DW layer, its block's projection PW weights and biases, so the block reproduces
    its unpruned output (--no-calib-project: the DW layers alone); --allocate kl measures each DW layer's
    sensitivity on the calibration images and gives sensitive layers (stride-2 ones, usually) lower ratios.
    Both keep every DCP/BWT/HSR rule and are recorded in the plan and the report.
    """
    from deprune_onnx.dw.planner import load_hsr_file
    from deprune_onnx.logging_utils import QUIET, configure
    from deprune_onnx.options import CalibOptions, DWOptions, PruneOptions, PWOptions
    from deprune_onnx.pipeline import prune_file
    from deprune_onnx.progress import configure_progress
    from deprune_onnx.trt.layer_choice import load_timings

    configure(QUIET if quiet else verbose)
    configure_progress(False if quiet else None)
    _refuse_options_without_effect(click.get_current_context(), method=method, target_speedup=target_speedup,
                                   calibrated=bool(calib_sources))
    calib = None
    if calib_sources or allocate or calib_saliency or calib_project or calib_n is not None \
            or calib_crops is not None or calib_preprocessing.preset or calib_preprocessing.changed():
        calib = CalibOptions(sources=list(calib_sources), n=calib_n, preprocess=calib_preprocessing, crops=calib_crops,
                             damp=_parse_damp(calib_damp), saliency=calib_saliency, refit=refit, project=calib_project,
                             allocate=allocate,
                             allocate_ratios=parse_ratio_list(allocate_ratios, "--allocate-ratios"),
                             allocate_samples=allocate_samples)
    hsr_alphas, layer_timings = load_hsr_file(hsr_timings) if hsr_timings else ({}, None)
    options = PruneOptions(
        dw=DWOptions(method=method, dw_ratio=dw_ratio, layer_ratios=parse_layer_ratios(layer_ratios),
                     exclude=list(exclude), tile=tile, hsr_alphas=hsr_alphas, hsr_rank=hsr_rank,
                     target_speedup=target_speedup, layer_timings=layer_timings),
        pw=PWOptions(ratio=pw_ratio, align=pw_align, scope=pw_scope, method=pw_method),
        output_format=output_format, dtype=dtype, calib=calib, keep_zeros=keep_zeros,
        timings=load_timings(timings_path) if timings_path else None)
    files = prune_file(input_path, output_path, options, plan_path=plan_path, report_path=report_path,
                       plan_out=plan_out, drop_initializer_inputs=drop_initializer_inputs)
    _echo_summary(files, as_json=as_json, quiet=quiet, keep_zeros=keep_zeros)


# Options that only act together with another one: given without it, they would be ignored silently.
_NEEDS_CALIB = {"calib_damp": "--calib-damp", "refit": "--refit/--no-refit", "allocate_ratios": "--allocate-ratios",
                "allocate_samples": "--allocate-samples", "calib_project": "--calib-project/--no-calib-project"}


def _refuse_options_without_effect(ctx: click.Context, *, method: str, target_speedup: float | None,
                                   calibrated: bool) -> None:
    """One-line errors (exit 2) for options the user typed that this combination would ignore. (--dw-ratio with
    --keep-zeros stays allowed: re-running the first prune's command line with --keep-zeros added is the
    documented way back from fine-tuning; a model without zeros gets a warning instead.)"""
    from deprune_onnx.errors import DepruneError

    given = {name for name in ctx.params
             if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT,
                                                        click.core.ParameterSource.DEFAULT_MAP)}
    if "dw_ratio" in given and target_speedup is not None:
        raise DepruneError("--dw-ratio and --target-speedup: give one (the target chooses the ratio)")
    if "hsr_rank" in given and method != "bh":
        raise DepruneError(f"--hsr-rank: only --method bh has an HSR step (got --method {method})")
    if not calibrated:
        for name, flag in _NEEDS_CALIB.items():
            if name in given:
                raise DepruneError(f"{flag}: acts only with calibration images; give --calib DIR")


def _echo_summary(files: PrunedFiles, as_json: bool, quiet: bool, keep_zeros: bool) -> None:
    """The report on stdout: JSON, or the table, what was written and the note on accuracy."""
    from deprune_onnx.report.build import format_calibration, format_report_table
    from deprune_onnx.trt.layer_choice import format_decisions

    result = files.result
    if as_json:
        click.echo(json.dumps(result.report, indent=2, sort_keys=True))
        return
    if quiet:
        return
    click.echo(format_report_table(result.report))
    if result.record.format_auto is not None:
        click.echo("\n".join(format_decisions(result.record.format_auto)))
    for layer, lines in (result.record.keep_zeros or {}).get("violations", {}).items():
        click.echo(f"--keep-zeros: {layer}: {'; '.join(lines)}")
    click.echo(f"wrote {files.model_path}, {files.report_path}, {files.plan_path}")
    if keep_zeros and not result.report["totals"].get("dw_kept_weights", 0) < result.report["totals"].get(
            "dw_weights", 0):
        click.echo("warning: --keep-zeros found no zero DW weight in the input, so nothing is pruned; prune it "
                   "first (--dw-ratio) or give the fine-tuned model", err=True)
    if result.record.calibration:
        click.echo(format_calibration(result.report))
    elif not keep_zeros and result.report["totals"].get("dw_ratio_achieved"):  # nothing pruned: nothing to recover
        click.echo("note: one-shot DW pruning costs accuracy (measured on MobileNetV2, BWT at DW PR 0.3: 40-65 top-1 "
                   "points without recovery); recover part of it without training with --calib DIR (and "
                   "--allocate kl), the rest by fine-tuning with the masks fixed ('deprune-onnx finetune', "
                   "or export-masks for your own training code); measure it with "
                   "'deprune-onnx eval OUT.onnx --reference IN.onnx --images DIR'.")
