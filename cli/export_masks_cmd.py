"""``deprune-onnx export-masks``: a plan's DW keep masks as a ``.npz`` for fine-tuning in PyTorch code."""
from __future__ import annotations

import click


@click.command("export-masks")
@click.argument("plan_path", metavar="PLAN.json", type=click.Path(dir_okay=True))
@click.argument("output_path", metavar="MASKS.npz", type=click.Path(dir_okay=True))
@click.option("--model", "model_path", metavar="ORIGINAL.onnx", type=click.Path(dir_okay=True), default=None,
              help="The model prune read. Needed when the plan removes PW channels (--pw-ratio): the masks then "
                   "get its (original) shapes and the removed channel indices are exported per tensor.")
@click.option("--shapes", type=click.Choice(["original", "reduced"]), default="original", show_default=True,
              help="Which model's shapes the masks have: the original model's, or the pruned model's after PW "
                   "channel removal (the same when the plan removes no PW channel).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def command(plan_path: str, output_path: str, model_path: str | None, shapes: str, quiet: bool) -> None:
    """Write the DW keep masks of PLAN.json (from 'prune --plan-out') to MASKS.npz.

    One boolean array per pruned DW layer, of the weight's shape, True = kept. Keys: the ONNX weight
    initializer name (e.g. 'onnx::Conv_541') and, when the ONNX names carry it, the PyTorch parameter name
    (e.g. 'features.1.conv.0.0.weight', from node '/features/features.1/conv/conv.0/conv.0.0/Conv').
    Fine-tune with the masks fixed (docs/finetune.md), export to ONNX, then
    'deprune-onnx prune tuned.onnx out.onnx --keep-zeros' keeps exactly those zeros.

    After PW channel removal (prune --pw-ratio) pass --model ORIGINAL.onnx: every tensor the removal shrank
    (PW filters and input channels, DW channels, classifier) gets a mask of its original shape with the removed
    channels False, and 'pw_removed/axis<k>/<key>' holds the removed indices. '__shapes__' says which shapes
    the masks refer to.

    \b
    Example:
      deprune-onnx prune mobilenet_v2.onnx pruned.onnx --format dense --dw-ratio 0.78
      deprune-onnx export-masks pruned.plan.json masks.npz
      deprune-onnx export-masks pw.plan.json masks.npz --model mobilenet_v2.onnx   # after --pw-ratio
      python -c "import numpy as np; print(list(np.load('masks.npz')))"
    """
    from deprune_onnx.onnx_io.load_save import check_output_path, load_model
    from deprune_onnx.plan import load_plan
    from deprune_onnx.report.masks_export import (REMOVED_PREFIX, SHAPES_KEY, plan_mask_arrays,
                                                  removes_pw_channels, save_masks)

    inputs = [plan_path] + ([model_path] if model_path else [])
    output = check_output_path(output_path, *inputs)
    plan = load_plan(plan_path)
    model = load_model(model_path) if model_path and removes_pw_channels(plan) else None
    arrays = plan_mask_arrays(plan, model, shapes)
    save_masks(output, arrays)
    if not quiet:
        masks = [key for key in arrays if key != SHAPES_KEY and not key.startswith(REMOVED_PREFIX)]
        torch_keys = sorted(key for key in masks if key.endswith(".weight"))
        removed = sum(key.startswith(REMOVED_PREFIX) for key in arrays)
        click.echo(f"wrote {output}: {len(masks)} mask keys in the {arrays[SHAPES_KEY]} model's shapes"
                   + (f", {removed} removed-channel index arrays" if removed else "")
                   + f" from {plan_path}"
                   + (f" (PyTorch names, e.g. '{torch_keys[0]}')" if torch_keys else ""))
