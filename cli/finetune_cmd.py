"""``deprune-onnx finetune``: recover accuracy by distillation from the unpruned model, masks fixed (PyTorch)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from deprune_onnx.cli.image_options import preprocessing_options

if TYPE_CHECKING:
    from deprune_onnx.evaluation.images import PreprocessOptions


@click.command("finetune")
@click.argument("input_path", metavar="PRUNED.onnx", type=click.Path(dir_okay=True))
@click.argument("output_path", metavar="OUT.onnx", type=click.Path(dir_okay=True))
@click.option("--teacher", "teacher_path", required=True, type=click.Path(dir_okay=True),
              help="The unpruned model to distil from (same input and output as PRUNED.onnx).")
@click.option("--images", "images_dir", required=True, metavar="DIR|FILE|GLOB",
              help="Training images (unlabelled; a trailing _<class> in the name is used as label).")
@click.option("--val-images", "val_dir", metavar="DIR|FILE|GLOB",
              help="Held-out images on which the KL to the teacher is reported before and after.")
@preprocessing_options()
@click.option("--plan", "plan_path", type=click.Path(dir_okay=True),
              help="The plan PRUNED.onnx was made with [default: its DW zero pattern, as prune --keep-zeros].")
@click.option("--method", type=click.Choice(["dcp", "b", "bh"]), default="bh", show_default=True,
              help="Structure the zero pattern is checked and aligned to when --plan is not given.")
@click.option("--tile", type=int, default=32, show_default=True, help="Tile T for HSR alignment (without --plan).")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="Optimizer steps.")
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True, help="Views per step.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True,
              help="adam, or sgd with momentum 0.9 (the paper's long fine-tuning).")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True),
              help="Learning rate [default: 1e-4 for adam, 1e-3 for sgd].")
@click.option("--temperature", type=click.FloatRange(min=0.0, min_open=True), default=2.0, show_default=True,
              help="Distillation temperature T.")
@click.option("--label-weight", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Weight of the cross-entropy on labels, used only when every image has a usable label.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random views.")
@click.option("--plan-out", type=click.Path(dir_okay=False),
              help="Where to write the plan whose masks were kept [default: OUT.plan.json].")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Where to write losses and KL [default: OUT.finetune.json].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def command(input_path: str, output_path: str, teacher_path: str, images_dir: str, val_dir: str | None,
            preprocessing: "PreprocessOptions", plan_path: str | None, method: str, tile: int, steps: int, batch: int, optimizer: str,
            lr: float | None, temperature: float,
            label_weight: float, device: str, seed: int, plan_out: str | None, report_path: str | None,
            as_json: bool, quiet: bool) -> None:
    """Fine-tune PRUNED.onnx by distillation from --teacher, keeping pruned weights at zero; write OUT.onnx.

    PRUNED.onnx is a dense pruned model ('prune --format dense'). It is converted to PyTorch (onnx2torch,
    checked against ONNX Runtime), trained on random crops and flips of --images (preprocessed by the
    preprocessing 'eval' would use: --preprocess, --mean/--std/..., the teacher's metadata_props) to match the
    teacher's
    outputs (KL at temperature T; plus cross-entropy when the file names carry labels), with the DW masks
    fixed: pruned weights stay exactly zero, removed channels stay removed. The trained values are written
    back into PRUNED.onnx's own graph (node names unchanged) and the plan is re-applied, so OUT.onnx passes
    the structural checks and rewrites to the plugin op (last line of the example). Writes OUT.plan.json and
    OUT.finetune.json (loss per step, KL to the teacher before/after). Needs PyTorch:
    pip install 'deprune-onnx[finetune]'. Recipe for your own training code: docs/finetune.md.

    \b
    Example:
      deprune-onnx prune mobilenet_v2.onnx pruned.onnx --format dense --dw-ratio 0.5
      deprune-onnx finetune pruned.onnx tuned.onnx --teacher mobilenet_v2.onnx \\
          --images train_images/ --plan pruned.plan.json --steps 500 --device cuda
      deprune-onnx prune tuned.onnx fast.onnx --keep-zeros --format plugin
    """
    from deprune_onnx.finetune import require_torch

    require_torch()
    import torch

    from deprune_onnx.errors import DepruneError
    from deprune_onnx.finetune.distill import DistillOptions
    from deprune_onnx.evaluation.images import TrainingImages, find_images, load_image_set, preprocessing_for
    from deprune_onnx.finetune.run import finetune_model, input_shape
    from deprune_onnx.onnx_io.load_save import (check_output_path, load_model, save_model, sidecar_path,
                                                write_json_atomic)
    from deprune_onnx.plan import load_plan
    from deprune_onnx.progress import configure_progress, count_progress

    output = check_output_path(output_path, input_path, teacher_path)
    plan_file = check_output_path(plan_out or sidecar_path(output, ".plan.json"), input_path)
    report_file = check_output_path(report_path or sidecar_path(output, ".finetune.json"), input_path)
    if device == "cuda" and not torch.cuda.is_available():
        raise DepruneError("--device cuda: PyTorch sees no CUDA device (use --device cpu)")
    plan = load_plan(plan_path) if plan_path else None
    student, teacher = load_model(input_path), load_model(teacher_path)
    preset = preprocessing_for(preprocessing, input_shape(student), (teacher, str(teacher_path)),
                               (student, str(input_path)))
    images = TrainingImages.load(find_images(images_dir), preset)
    eval_sets = {"train_centre": images.centre_views(), "train_corner_flips": images.corner_flip_views()}
    if val_dir:
        eval_sets["val_centre"] = load_image_set(find_images(val_dir, "--val-images"), preset).inputs
    options = DistillOptions(steps=steps, batch=batch, optimizer=optimizer, lr=lr, temperature=temperature,
                             label_weight=label_weight, seed=seed, device=device)

    configure_progress(False if quiet or as_json else None)
    with count_progress(steps, "distilling", unit="step") as advance:
        result = finetune_model(student, teacher, images, options, plan, method, tile, eval_sets,
                                on_step=lambda step, loss: advance(1))
    save_model(result.model, output)
    write_json_atomic(plan_file, result.plan.to_dict())
    report = result.to_dict()
    write_json_atomic(report_file, report)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    elif not quiet:
        for name in result.kl_before:
            click.echo(f"KL to teacher on {name}: {result.kl_before[name]:.4f} -> {result.kl_after[name]:.4f}")
        click.echo(f"labels: {'used' if result.labels_used else 'not used'}; "
                   f"{len(result.masked_parameters)} masked DW weights; {len(result.frozen)} frozen parameters")
        click.echo(f"wrote {output}, {plan_file}, {report_file}")
