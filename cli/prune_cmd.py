"""``deprune-onnx prune``: compute DEPrune masks and write the pruned model, its report and its plan."""
from __future__ import annotations

import json
from pathlib import Path

import click

from deprune_onnx.cli.options import parse_layer_ratios


def sidecar_path(output: Path, suffix: str) -> Path:
    """``out.onnx`` -> ``out<suffix>`` (e.g. ``out.report.json``) in the same folder."""
    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    return output.with_name(stem + suffix)


@click.command("prune")
@click.argument("input_path", metavar="IN.onnx", type=click.Path(dir_okay=True))
@click.argument("output_path", metavar="OUT.onnx", type=click.Path(dir_okay=True))
@click.option("--method", type=click.Choice(["dcp", "b", "bh"]), default="bh", show_default=True,
              help="dcp = DEPrune (DCP); b = DEPrune-B (DCP + balanced workload tuning); "
                   "bh = DEPrune-BH (+ hardware-aware sub-GEMM recalibration to the tile).")
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
@click.option("--format", "output_format", type=click.Choice(["dense", "plugin"]), default="dense",
              show_default=True,
              help="dense = standard Conv with masked weights; plugin = DRSparseDepthwiseConv custom op.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def command(input_path: str, output_path: str, method: str, dw_ratio: float, layer_ratios: tuple[str, ...],
            exclude: tuple[str, ...], tile: int, hsr_timings: str | None, plan_path: str | None,
            keep_zeros: bool, plan_out: str | None, report_path: str | None, output_format: str,
            as_json: bool, quiet: bool) -> None:
    """Prune the depthwise convs of IN.onnx the DEPrune way and write OUT.onnx.

    Writes OUT.onnx, OUT.report.json (every layer: target and achieved PR, Real DW, K per sub-GEMM,
    over/under alignment, predicted speedup) and OUT.plan.json (the masks, re-appliable with --plan).
    IN.onnx is never modified; every output is written atomically.

    \b
    Examples:
      deprune-onnx prune mobilenet_v2.onnx mnv2_bh.onnx --method bh --dw-ratio 0.78
      deprune-onnx prune m.onnx out.onnx --method b --dw-ratio 0.5 --layer-ratio '*conv.1.0*=0.3'
      deprune-onnx prune m.onnx again.onnx --plan out.plan.json
      deprune-onnx prune finetuned.onnx out.onnx --keep-zeros --method bh --format plugin
    """
    from deprune_onnx.dw_planner import DWOptions, check_ratio, load_hsr_timings
    from deprune_onnx.errors import DepruneError
    from deprune_onnx.model_io import check_output_path, load_model, save_model, write_json_atomic
    from deprune_onnx.pipeline import PruneOptions, prune_model
    from deprune_onnx.plan import load_plan
    from deprune_onnx.report import format_report_table

    check_ratio(dw_ratio, "--dw-ratio")
    if keep_zeros and plan_path:
        raise DepruneError("--keep-zeros and --plan: choose one source of masks")
    output = check_output_path(output_path, input_path)
    report_file = check_output_path(report_path or sidecar_path(output, ".report.json"), input_path)
    plan_file = check_output_path(plan_out or sidecar_path(output, ".plan.json"), input_path)
    dw_options = DWOptions(method=method, dw_ratio=dw_ratio, layer_ratios=parse_layer_ratios(layer_ratios),
                           exclude=list(exclude), tile=tile,
                           hsr_alphas=load_hsr_timings(hsr_timings) if hsr_timings else {})
    plan = load_plan(plan_path) if plan_path else None
    model = load_model(input_path)
    result = prune_model(model, PruneOptions(dw=dw_options, output_format=output_format,
                                              keep_zeros=keep_zeros), plan)

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
        if not keep_zeros:
            click.echo("note: one-shot DW pruning costs accuracy (MobileNetV2, BWT at DW PR 0.3: 40-65 top-1 "
                       "points without recovery); measure it with 'deprune-onnx compare IN.onnx OUT.onnx'.")
