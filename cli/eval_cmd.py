"""``deprune-onnx eval``: top-1/top-5 against labels and agreement/KL/cosine against a reference model."""
from __future__ import annotations

import json
from typing import Any

import click

from deprune_onnx.cli.image_options import image_source_options, load_images


@click.command("eval")
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=True))
@click.option("--reference", "reference_path", type=click.Path(dir_okay=True), metavar="REF.onnx",
              help="Unpruned model: report top-1 agreement, mean KL(ref || model) and logit cosine against it.")
@image_source_options(required=True)
@click.option("--batch-size", type=int, default=16, show_default=True, help="Samples per ONNX Runtime call.")
@click.option("--min-agreement", type=float, metavar="F",
              help="Exit 1 when the top-1 agreement with --reference is below F (0..1).")
@click.option("--max-kl", type=float, metavar="X", help="Exit 1 when the mean KL to --reference is above X.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
def command(model_path: str, reference_path: str | None, images: tuple[str, ...], preprocess: str | None,
            crops: int, labels: str | None, batch_size: int, min_agreement: float | None, max_kl: float | None,
            as_json: bool) -> None:
    """Measure MODEL.onnx on a folder of images, alone or against its unpruned REF.onnx.

    Labels come from the last number of each file name (imagenet_00_243.jpg -> class 243) or from --labels.
    Preprocessing presets: imagenet (torchvision: short side 256, centre crop 224, RGB, mean/std), pplcnet (the
    same in BGR), ppocr-cls (48x192 text line, BGR, (x/255-0.5)/0.5); the default guesses from the input shape.
    --crops N evaluates N views of every image (centre, corners, flips, smaller windows), which makes agreement
    finer than a handful of images allows. A model with deprune custom ops is lowered to standard ops first.

    \b
    Examples:
      deprune-onnx eval mobilenet_v2.onnx --images imagenet_samples/
      deprune-onnx eval pruned.onnx --reference mobilenet_v2.onnx --images imagenet_samples/ --crops 10
      deprune-onnx eval ocr_cls_pruned.onnx --reference ocr_cls.onnx --images lines/ --preprocess ppocr-cls --json
    """
    from deprune_onnx.errors import CheckFailed, DepruneError
    from deprune_onnx.evaluation import ModelRunner, evaluate
    from deprune_onnx.onnx_io.load_save import load_model
    from deprune_onnx.progress import configure_progress, count_progress

    if batch_size < 1:
        raise DepruneError(f"--batch-size {batch_size}: must be at least 1")
    if (min_agreement is not None or max_kl is not None) and reference_path is None:
        raise DepruneError("--min-agreement/--max-kl need --reference REF.onnx")
    runner = ModelRunner(load_model(model_path), str(model_path), batch_size)
    reference = ModelRunner(load_model(reference_path), str(reference_path), batch_size) \
        if reference_path else None
    image_set = load_images(images, preprocess, crops, labels, runner.input_shape)
    total = len(image_set.inputs) * (2 if reference else 1)
    configure_progress(False if as_json else None)
    with count_progress(total, "evaluating", unit="sample") as advance:
        result = evaluate(runner, image_set, reference, progress=advance)
    data = result.to_dict()
    data["model"] = str(model_path)
    data["reference"] = str(reference_path) if reference_path else None
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(format_evaluation(data))
    agreement = result.agreement
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
    if data["labels"]:
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
    return "\n".join(lines)
