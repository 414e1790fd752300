"""``deprune-onnx compare``: run an original and a pruned model in ONNX Runtime and check how far apart they are."""
from __future__ import annotations

import json

import click

from deprune_onnx.cli.image_options import image_source_options


def _three_floats(ctx: click.Context, param: click.Parameter, value: str | None
                  ) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3:
        raise click.BadParameter(f"expected three comma-separated numbers (R,G,B), got '{value}'")
    return numbers


@click.command("compare")
@click.argument("original_path", metavar="ORIGINAL.onnx")
@click.argument("pruned_path", metavar="PRUNED.onnx")
@image_source_options(required=False, crops=False, labels=False)
@click.option("--n", "n", type=click.IntRange(min=1), default=16, show_default=True,
              help="Random inputs to run (and at most this many images).")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Relative tolerance of the elementwise check [default: 1e-5].")
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              help="Absolute tolerance of the elementwise check [default: 1e-5].")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="Required top-1 agreement of class-score outputs. Given alone, it replaces the tolerance check.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--mean", default=None, callback=_three_floats, metavar="R,G,B",
              help="Per-channel mean subtracted from images scaled to [0, 1] [default: the preset's].")
@click.option("--std", default=None, callback=_three_floats, metavar="R,G,B",
              help="Per-channel std dividing images after the mean [default: the preset's].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(original_path: str, pruned_path: str, images: tuple[str, ...], preprocess: str | None, n: int,
            rtol: float | None, atol: float | None, min_agreement: float | None, seed: int,
            mean: tuple[float, float, float] | None, std: tuple[float, float, float] | None,
            as_json: bool) -> None:
    """Compare ORIGINAL and PRUNED on the same inputs in ONNX Runtime (CPU).

    Prints max/mean absolute and relative error, cosine similarity and top-1 agreement per output. A pruned
    model with DRSparseDepthwiseConv nodes is lowered to Conv first. Exit code 0 when the checks pass, 1 when
    not: the elementwise tolerance check (Polygraphy's: a value fails when both its absolute error exceeds
    --atol and its relative error exceeds --rtol) and, when given, --min-agreement. Images get the standard
    view of the --preprocess preset (as 'eval' makes it); --mean/--std replace the preset's mean and std.

    \b
    Examples:
      deprune-onnx compare dense.onnx pruned.onnx                 # rewritten == dense masked model?
      deprune-onnx compare model.onnx pruned.onnx --images imgs/ --min-agreement 0.9
      deprune-onnx compare model.onnx pruned_fp16.onnx --rtol 1e-2 --atol 1e-2 --json
    """
    from deprune_onnx.evaluation.compare import compare_models, format_report
    from deprune_onnx.errors import CheckFailed
    from deprune_onnx.onnx_io.load_save import load_model

    original = load_model(original_path)
    pruned = load_model(pruned_path)
    report = compare_models(original, pruned, n=n, seed=seed, images=images, rtol=rtol, atol=atol,
                            min_agreement=min_agreement, preprocess=preprocess, mean=mean, std=std)
    click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True) if as_json else format_report(report))
    if not report.passed:
        raise CheckFailed(f"{pruned_path} differs from {original_path}: {report.failures[0]}"
                          + (f" (and {len(report.failures) - 1} more)" if len(report.failures) > 1 else ""))
