"""``deprune-onnx eval``: top-1/top-5 against labels and agreement/KL/cosine against a reference model."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from deprune_onnx.cli.image_options import image_source_options, load_images

if TYPE_CHECKING:
    from deprune_onnx.evaluation.images import PreprocessOptions


@click.command("eval")
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=True))
@click.option("--reference", "reference_path", type=click.Path(dir_okay=True), metavar="REF.onnx",
              help="Unpruned model: report top-1 agreement, mean KL(ref || model) and logit cosine against it.")
@image_source_options(required=True)
@click.option("--batch-size", type=int, default=16, show_default=True, help="Samples per ONNX Runtime call.")
@click.option("--min-agreement", type=float, metavar="F",
              help="Exit 1 when the top-1 agreement with --reference is below F (0..1).")
@click.option("--max-kl", type=float, metavar="X", help="Exit 1 when the mean KL to --reference is above X.")
@click.option("--max-rel-error", type=float, metavar="X",
              help="Exit 1 when the mean relative L2 error of the outputs against --reference is above X (any output "
                   "kind: class scores, maps, sequences).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def command(model_path: str, reference_path: str | None, images: tuple[str, ...],
            preprocessing: "PreprocessOptions", crops: int, labels: str | None, batch_size: int,
            min_agreement: float | None, max_kl: float | None, max_rel_error: float | None, as_json: bool) -> None:
    """Measure MODEL.onnx on a folder of images, alone or against its unpruned REF.onnx.

    Labels come from the last number of each file name (imagenet_00_243.jpg -> class 243) or from --labels.
    Preprocessing: --preprocess names a preset (imagenet: torchvision, short side 256, centre crop 224, RGB,
    mean/std; pplcnet: the same in BGR; efficientnet-lite: (x-127)/128 on 0..255; keras-mobilenet: x/127.5-1;
    ppocr-cls: 48x192 text line, BGR, (x/255-0.5)/0.5). Without it, the model's metadata_props apply
    (Image.BitmapPixelFormat, Image.NominalPixelRange, deprune.preprocess.*; see docs/accuracy.md), else the
    preset is guessed from the input shape. --mean/--std (on the 0..1 scale unless --scale 255),
    --channel-order, --resize and --crop replace single fields. --crops N evaluates N views of every image (centre, corners, flips, smaller windows), which makes agreement
    finer than a handful of images allows. A model with deprune custom ops is lowered to standard ops first, and
    a float16 model is fed float16.

    Class metrics (top-1/top-5, agreement, KL) are measured only when the output is class scores; maps (a
    detector's [N, 1, H, W], a segmenter's [N, C, H, W]) and sequences ([N, T, C]) get the relative L2 error,
    cosine and max abs error against --reference instead (those are reported for every kind).

    \b
    Examples:
      deprune-onnx eval mobilenet_v2.onnx --images imagenet_samples/
      deprune-onnx eval pruned.onnx --reference mobilenet_v2.onnx --images imagenet_samples/ --crops 10
      deprune-onnx eval ocr_cls_pruned.onnx --reference ocr_cls.onnx --images lines/ --preprocess ppocr-cls --json
      deprune-onnx eval efficientnet_lite0.onnx --images imgs/ --mean 127 --std 128 --scale 255
    """
    from deprune_onnx.errors import CheckFailed, DepruneError
    from deprune_onnx.evaluation import ModelRunner, evaluate
    from deprune_onnx.evaluation.output_kind import describe
    from deprune_onnx.onnx_io.load_save import load_model
    from deprune_onnx.progress import configure_progress, count_progress

    if batch_size < 1:
        raise DepruneError(f"--batch-size {batch_size}: must be at least 1")
    if (min_agreement is not None or max_kl is not None or max_rel_error is not None) and reference_path is None:
        raise DepruneError("--min-agreement/--max-kl/--max-rel-error need --reference REF.onnx")
    model = load_model(model_path)
    reference_model = load_model(reference_path) if reference_path else None
    runner = ModelRunner(model, str(model_path), batch_size)
    reference = ModelRunner(reference_model, str(reference_path), batch_size) if reference_model else None
    image_set = load_images(images, preprocessing, crops, labels, runner.input_shape, (model, str(model_path)),
                            (reference_model, str(reference_path)) if reference_model else None)
    total = len(image_set.inputs) * (2 if reference else 1)
    configure_progress(False if as_json else None)
    with count_progress(total, "evaluating", unit="sample") as advance:
        result = evaluate(runner, image_set, reference, progress=advance)
    if (min_agreement is not None or max_kl is not None) and result.agreement is None:
        raise DepruneError(f"--min-agreement/--max-kl: class metrics, and the output of {model_path} is "
                           f"{describe(result.output_kind, [0, *result.output_shape])}; use --max-rel-error")
    data = result.to_dict()
    data["model"] = str(model_path)
    data["reference"] = str(reference_path) if reference_path else None
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(format_evaluation(data))
    agreement = result.agreement
    if result.errors is not None and max_rel_error is not None and result.errors.rel_l2_mean > max_rel_error:
        raise CheckFailed(f"mean relative L2 error {result.errors.rel_l2_mean:.4g} is above --max-rel-error "
                          f"{max_rel_error}")
    if agreement is not None and min_agreement is not None and agreement.agreement < min_agreement:
        raise CheckFailed(f"top-1 agreement {agreement.agreement:.4f} is below --min-agreement {min_agreement}")
    if agreement is not None and max_kl is not None and agreement.kl_mean > max_kl:
        raise CheckFailed(f"mean KL {agreement.kl_mean:.4f} is above --max-kl {max_kl}")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_evaluation(data: dict[str, Any]) -> str:
    """Human-readable lines of one evaluation (``Evaluation.to_dict`` plus model names)."""
    lines = [f"{data['model']}: {data['images']} images x {data['views']} view(s) = {data['samples']} samples, "
             f"preprocess {data['preprocess']}"]
    if data["output_kind"] != "class_scores":
        shape = ", ".join(map(str, data["output_shape"]))
        lines.append(f"  output [N, {shape}] is not class scores ({data['output_kind']}): top-1/top-5, agreement "
                     "and KL do not apply")
    elif data["labels"]:
        lines.append(f"  top-1 {_percent(data['labels']['top1'])}  top-5 {_percent(data['labels']['top5'])}")
    else:
        lines.append("  no labels (or labels outside the model's classes): top-1/top-5 not measured")
    if data["agreement"]:
        ref = data["reference_labels"]
        if ref:
            lines.append(f"  reference {data['reference']}: top-1 {_percent(ref['top1'])}  "
                         f"top-5 {_percent(ref['top5'])}")
        agreement = data["agreement"]
        lines.append(f"  vs reference: top-1 agreement {_percent(agreement['agreement'])}, "
                     f"mean KL {agreement['kl_mean']:.4f} (max {agreement['kl_max']:.4f}), "
                     f"logit cosine {agreement['cosine_mean']:.4f}")
    if data["errors"]:
        errors = data["errors"]
        lines.append(f"  vs reference: relative L2 error {errors['rel_l2_mean']:.4g} (max {errors['rel_l2_max']:.4g}), "
                     f"cosine {errors['cosine_mean']:.6f}, max abs error {errors['max_abs']:.4g}")
    return "\n".join(lines)
