"""``deprune-onnx compare``: run an original and a pruned model in ONNX Runtime and check how far apart they are."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from deprune_onnx.cli.image_options import image_source_options

if TYPE_CHECKING:
    from deprune_onnx.evaluation.images import PreprocessOptions


@click.command("compare")
@click.argument("original_path", metavar="ORIGINAL.onnx")
@click.argument("pruned_path", metavar="PRUNED.onnx")
@image_source_options(required=False, crops=False, labels=False)
@click.option("--n", "n", type=click.IntRange(min=1), default=16, show_default=True,
              help="Random inputs to run, and the cap on images: only the first N (by name) are used, and the "
                   "report says so when --images holds more.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None,
              help="Relative tolerance of the elementwise check [default: 1e-5].")
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              help="Absolute tolerance of the elementwise check [default: 1e-5].")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="Required top-1 agreement of class-score outputs. Given alone, it replaces the tolerance check.")
@click.option("--judge", type=click.Choice(["all", "images"]), default="all", show_default=True,
              help="Input sets the checks judge: all (random inputs and images) or images only (random inputs "
                   "are still run and reported).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(original_path: str, pruned_path: str, images: tuple[str, ...], preprocessing: "PreprocessOptions",
            n: int, rtol: float | None, atol: float | None, min_agreement: float | None, judge: str, seed: int,
            as_json: bool) -> None:
    """Compare ORIGINAL and PRUNED on the same inputs in ONNX Runtime (CPU).

    Prints max/mean absolute and relative error, relative L2 error, cosine similarity and (for class-score
    outputs only, not maps or sequences) top-1 agreement per output. A model with DRSparseDepthwiseConv nodes
    (either one, or both) is lowered to Conv first, from the op's packed weights (the op's ONNX Runtime
    reference): so dense vs plugin checks the rewrite and the packing, not the CUDA kernel, which 'bench'
    checks on a GPU. Each model is fed its own input type (float16 or float32). Exit code 0 when the checks
    pass, 1 when not: the elementwise tolerance check (Polygraphy's: a value fails when both its absolute error
    exceeds --atol and its relative error exceeds --rtol; an output whose original values all lie within --atol
    of 0 is judged by its relative L2 error <= --rtol instead) and, when given, --min-agreement. Images get the
    standard view of the preprocessing 'eval' would use (--preprocess, the model's metadata_props,
    --mean/--std/...).

    \b
    Examples:
      deprune-onnx compare dense.onnx pruned.onnx                 # rewrite + packing == dense masked model?
      deprune-onnx compare model.onnx pruned.onnx --images imgs/ --min-agreement 0.9
      deprune-onnx compare model.onnx pruned.onnx --images imgs/ --n 100 --min-agreement 0.9 --judge images
      deprune-onnx compare model.onnx pruned_fp16.onnx --rtol 1e-2 --atol 1e-2 --json
    """
    from deprune_onnx.evaluation.compare import compare_models, format_report
    from deprune_onnx.errors import CheckFailed
    from deprune_onnx.onnx_io.load_save import load_model

    original = load_model(original_path)
    pruned = load_model(pruned_path)
    report = compare_models(original, pruned, n=n, seed=seed, images=images, rtol=rtol, atol=atol,
                            min_agreement=min_agreement, preprocessing=preprocessing, judge=judge)
    click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True) if as_json else format_report(report))
    if not report.passed:
        raise CheckFailed(f"{pruned_path} differs from {original_path}: {report.failures[0]}"
                          + (f" (and {len(report.failures) - 1} more)" if len(report.failures) > 1 else ""))
