"""``deprune-onnx finetune``: recover accuracy by distillation from the unpruned model, masks fixed (PyTorch)."""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import TYPE_CHECKING

import click

from deprune_onnx.cli.image_options import preprocessing_options

if TYPE_CHECKING:
    import onnx

    from deprune_onnx.evaluation.images import PreprocessOptions


# Below this many validation images, picking the best epoch by a metric is mostly noise (ties at 0% or 100%).
SMALL_VALIDATION = 20


def frozen_reasons(frozen: dict[str, str]) -> str:
    """' (N: reason, ...)' for the console: why parameters were frozen, the names left out (the full list is in
    OUT.finetune.json), e.g. PyTorch's exporter sharing equal biases between convs."""
    counts = Counter(re.sub(r"'[^']*'", "", re.sub(r"initializer '[^']*' is shared by", "an initializer shared by",
                                                   reason)).replace("  ", " ") for reason in frozen.values())
    return f" ({'; '.join(f'{n}: {reason}' for reason, n in counts.most_common())})" if counts else ""


def _shared_conv_names(student: "onnx.ModelProto", teacher: "onnx.ModelProto") -> set[str]:
    """Conv node names in both models (pruning keeps node names, so a model and its prune share them all)."""
    names = [{node.name for node in model.graph.node if node.op_type == "Conv" and node.name}
             for model in (student, teacher)]
    return names[0] & names[1]


@click.command("finetune")
@click.argument("input_path", metavar="PRUNED.onnx", type=click.Path(dir_okay=True))
@click.argument("output_path", metavar="OUT.onnx", type=click.Path(dir_okay=True))
@click.option("--teacher", "teacher_path", required=True, type=click.Path(dir_okay=True),
              help="The unpruned model to distil from (same input and output as PRUNED.onnx).")
@click.option("--images", "images_source", required=True, metavar="DIR|LIST|GLOB",
              help="Training images: an ImageFolder tree (one sub-folder per class), a folder of images (a "
                   "trailing _<class> in every name is a label), a list file ('path [label]' per line) or a glob.")
@click.option("--val-images", "val_source", metavar="DIR|LIST|GLOB",
              help="Validation images (same layouts) [default: --val-fraction of --images, held out].")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Share of --images held out for validation when --val-images is not given.")
@preprocessing_options()
@click.option("--plan", "plan_path", type=click.Path(dir_okay=True),
              help="The plan whose masks stay fixed [default: PRUNED.plan.json when it exists, else the DW zero "
                   "pattern of PRUNED.onnx exactly as it is].")
@click.option("--realign", type=click.Choice(["b", "bh"]),
              help="Check and align the zero pattern to this structure first, like prune --keep-zeros --method "
                   "(changes masks; every changed layer is reported). Off by default: masks never change.")
@click.option("--tile", type=int, default=32, show_default=True, help="Tile T for --realign bh.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="Passes over --images.")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Global batch per optimizer step (over all processes and --accumulate micro-batches).")
@click.option("--accumulate", type=click.IntRange(min=1), default=1, show_default=True,
              help="Gradient accumulation: micro-batches per optimizer step.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True,
              help="sgd: momentum 0.9 (the paper's); adam: better for short runs on few images.")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True),
              help="Learning rate [default: 1e-3 for sgd, 1e-4 for adam].")
@click.option("--weight-decay", type=click.FloatRange(min=0.0), default=1e-4, show_default=True)
@click.option("--schedule", type=click.Choice(["step", "cosine", "constant"]), default="step", show_default=True,
              help="step: lr x --step-gamma every --step-epochs epochs (the paper's: /10 every 30); cosine: to 0 "
                   "at the last step.")
@click.option("--step-epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--step-gamma", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.1, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0, min_open=True), default=2.0, show_default=True,
              help="Distillation temperature T.")
@click.option("--label-weight", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Weight of the cross-entropy on labels, used only when every training image has a usable label.")
@click.option("--min-scale", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.08, show_default=True,
              help="Smallest area share of the random resized crop (torchvision's and the paper's 0.08).")
@click.option("--batchnorm", type=click.Choice(["auto", "train", "frozen"]), default="auto", show_default=True,
              help="BatchNorm layers left in the model: auto = train mode (statistics re-estimated) unless the "
                   "graph runs one sample at a time.")
@click.option("--amp/--no-amp", default=True, show_default=True,
              help="Mixed precision on CUDA: bfloat16 where the GPU supports it, else float16 with a gradient "
                   "scaler (ignored on CPU).")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader worker processes decoding images.")
@click.option("--select", type=click.Choice(["auto", "loss", "kl", "accuracy", "last"]), default="auto",
              show_default=True,
              help="Validation metric that picks the written epoch: auto = accuracy when the validation images "
                   "carry labels, else the validation loss; last = the last epoch, whatever validation says.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data order, views and split.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False),
              help="Where last.pt / best.pt are written every epoch [default: OUT.checkpoints/].")
@click.option("--resume", is_flag=True, help="Continue from CHECKPOINT_DIR/last.pt (same models, data, options).")
@click.option("--plan-out", type=click.Path(dir_okay=False),
              help="Where to write the plan whose masks were kept [default: OUT.plan.json].")
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help="Where to write the per-epoch metrics [default: OUT.finetune.json; the curve: OUT.finetune.png].")
@click.option("--no-plot", is_flag=True, help="Do not draw OUT.finetune.png (no matplotlib needed).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def command(input_path: str, output_path: str, teacher_path: str, images_source: str, val_source: str | None,
            val_fraction: float, preprocessing: "PreprocessOptions", plan_path: str | None, realign: str | None, tile: int,
            epochs: int, batch: int, accumulate: int, optimizer: str, lr: float | None, weight_decay: float,
            schedule: str, step_epochs: int, step_gamma: float, temperature: float, label_weight: float,
            min_scale: float, batchnorm: str, amp: bool, workers: int, select: str, device: str, seed: int,
            checkpoint_dir: str | None, resume: bool, plan_out: str | None, report_path: str | None,
            no_plot: bool, as_json: bool, quiet: bool) -> None:
    """Fine-tune PRUNED.onnx by distillation from --teacher, keeping its masks; write the best epoch to OUT.onnx.

    PRUNED.onnx is a dense pruned model ('prune --format dense') with a static [N, C, H, W] image input (1-D
    and other inputs: export-masks and your own training code, docs/finetune.md). Its masks come from --plan, else from
    PRUNED.plan.json beside it, else from its zero pattern as it is; they never change unless --realign asks.
    Student and teacher are converted to PyTorch (onnx2torch, checked against ONNX Runtime) and the student
    is trained for --epochs on random resized crops and flips of --images (streamed by DataLoader workers,
    preprocessed as 'eval' would: --preprocess, --mean/--std/..., the teacher's metadata_props) to match the teacher (KL at temperature T, plus
    cross-entropy when the images carry labels). Every epoch is validated and checkpointed; OUT.onnx holds the
    best epoch's weights, written back into PRUNED.onnx's own graph and checked against it (same nodes and
    shapes, pruned weights +0.0), so it rewrites to the plugin op (last line of the example). Writes
    OUT.plan.json, OUT.finetune.json (metrics per epoch, the chosen epoch) and OUT.finetune.png (unless
    --no-plot). Several
    GPUs: torchrun --nproc_per_node N -m deprune_onnx.finetune PRUNED.onnx OUT.onnx ... (same options).
    Needs PyTorch: pip install 'deprune-onnx[finetune]'. Recipe for your own training code: docs/finetune.md.

    \b
    Example:
      deprune-onnx prune mobilenet_v2.onnx pruned.onnx --format dense --dw-ratio 0.5
      deprune-onnx finetune pruned.onnx tuned.onnx --teacher mobilenet_v2.onnx \
          --images train/ --val-images val/ --epochs 65 --batch 256 --device cuda
      deprune-onnx prune tuned.onnx fast.onnx --keep-zeros --format plugin
    """
    from deprune_onnx.finetune import require_torch

    require_torch()
    from pathlib import Path

    from deprune_onnx.evaluation.images import preprocessing_for
    from deprune_onnx.finetune import distributed
    from deprune_onnx.finetune.curves import curve_png
    from deprune_onnx.finetune.data import hold_out, list_images
    from deprune_onnx.finetune.run import finetune_model, input_shape
    from deprune_onnx.errors import DepruneError
    from deprune_onnx.finetune.train import TrainOptions, loader_batch
    from deprune_onnx.onnx_io.load_save import (check_output_path, load_model, save_model, sidecar_path,
                                                write_bytes_atomic, write_json_atomic)
    from deprune_onnx.plan import load_plan
    from deprune_onnx.progress import configure_progress
    from deprune_onnx.report.plots import require_matplotlib

    output = check_output_path(output_path, input_path, teacher_path)
    plan_file = check_output_path(plan_out or sidecar_path(output, ".plan.json"), input_path)
    report_file = check_output_path(report_path or sidecar_path(output, ".finetune.json"), input_path)
    curve_file = None if no_plot else report_file.with_suffix(".png")
    if curve_file is not None:
        require_matplotlib(str(curve_file))  # before hours of training, not after
    checkpoints = Path(checkpoint_dir) if checkpoint_dir else sidecar_path(output, ".checkpoints")
    sidecar = sidecar_path(Path(input_path), ".plan.json")
    if plan_path:
        plan, plan_source = load_plan(plan_path), f"--plan {plan_path}"
    elif realign is None and sidecar.is_file():
        plan, plan_source = load_plan(sidecar), f"{sidecar}, beside the pruned model"
    else:
        plan, plan_source = None, None
    options = TrainOptions(epochs=epochs, batch=batch, accumulate=accumulate, optimizer=optimizer, lr=lr,
                           weight_decay=weight_decay, schedule=schedule, step_epochs=step_epochs,
                           step_gamma=step_gamma, temperature=temperature, label_weight=label_weight,
                           batchnorm=batchnorm, amp=amp, workers=workers, min_scale=min_scale, select=select,
                           seed=seed, device=device)
    if val_source and click.get_current_context().get_parameter_source("val_fraction") \
            == click.core.ParameterSource.COMMANDLINE:
        raise DepruneError("--val-fraction and --val-images: give one (--val-fraction holds images out of --images "
                           "only when no --val-images is given)")
    student, teacher = load_model(input_path), load_model(teacher_path)
    preset = preprocessing_for(preprocessing, input_shape(student), (teacher, str(teacher_path)),
                               (student, str(input_path)))
    train = list_images(images_source)
    val = list_images(val_source, "--val-images") if val_source else None
    if val is None:
        train, val = hold_out(train, val_fraction, seed)
    processes = distributed.start(device)
    try:
        loader_batch(options, processes.world)  # option errors before any message
        if resume and not (checkpoints / "last.pt").is_file():
            raise DepruneError(f"--resume: no checkpoint '{checkpoints / 'last.pt'}'")
        talk = processes.main and not (quiet or as_json)
        configure_progress(None if talk else False)
        result = finetune_model(student, teacher, train, val, preset, options, processes, plan, plan_source,
                                realign, tile, checkpoints, resume, log=click.echo if talk else (lambda _: None),
                                names=(str(input_path), f"--teacher {teacher_path}"))
        if processes.main:
            for warning in result.training.extra["warnings"]:
                click.echo(f"warning: {warning}", err=True)
            report = result.to_dict()
            report["data"].update(train_source=images_source, val_source=val_source or
                                  f"held out from --images (fraction {val_fraction}, seed {seed})")
            save_model(result.model, output)
            write_json_atomic(plan_file, result.plan.to_dict())
            write_json_atomic(report_file, report)
            if curve_file is not None:
                write_bytes_atomic(curve_file, curve_png(result.training.history, result.training.best_epoch,
                                                         result.training.selected_by))
            if as_json:
                click.echo(json.dumps(report, indent=2, sort_keys=True))
            elif talk:
                best = result.training.history[result.training.best_epoch]
                summary = ", ".join(f"{key} {max(best[key], 0.0) if key == 'val_kl' else best[key]:.4f}"
                                    for key in ("val_loss", "val_kl", "val_accuracy") if key in best)
                click.echo(f"best epoch {result.training.best_epoch} by {result.training.selected_by}: {summary}")
                labels = "used" if result.labels_used else f"not used ({result.data['labels_not_used_because']})"
                click.echo(f"labels: {labels}; "
                           f"{len(result.masked_parameters)} masked DW weight tensors; {len(result.frozen)} frozen "
                           f"parameters{frozen_reasons(result.frozen)}; masks and removed channels unchanged "
                           "(checked)")
            if talk and result.training.best_epoch == 0:
                click.echo(f"warning: no epoch beat the pruned model on the {len(val.paths)} validation image(s) "
                           f"({result.training.selected_by}), so {output} holds the input's weights unchanged; "
                           "train longer or on more images", err=True)
            if talk and not _shared_conv_names(student, teacher):
                click.echo(f"warning: --teacher {teacher_path} shares no Conv node name with {input_path}: if it is "
                           "not the model that was pruned, the student is distilled from another network", err=True)
            if talk and len(val.paths) < SMALL_VALIDATION:
                advice = "more --val-images" if val_source else "--val-images or a larger --val-fraction"
                click.echo(f"warning: the epoch is chosen on {len(val.paths)} validation image(s); with fewer than "
                           f"{SMALL_VALIDATION} that choice is mostly noise (give {advice})", err=True)
            if talk:
                written = [output, plan_file, report_file] + ([curve_file] if curve_file is not None else [])
                click.echo(f"wrote {', '.join(map(str, written))}")
        processes.barrier()
    finally:
        distributed.finish(processes)
