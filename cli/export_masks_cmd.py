"""``deprune-onnx export-masks``: a plan's DW keep masks as a ``.npz`` for fine-tuning in PyTorch code."""
from __future__ import annotations

import click


@click.command("export-masks")
@click.argument("plan_path", metavar="PLAN.json", type=click.Path(dir_okay=True))
@click.argument("output_path", metavar="MASKS.npz", type=click.Path(dir_okay=True))
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def command(plan_path: str, output_path: str, quiet: bool) -> None:
    """Write the DW keep masks of PLAN.json (from 'prune --plan-out') to MASKS.npz.

    One boolean array per pruned DW layer, of the weight's shape, True = kept. Keys: the ONNX weight
    initializer name (e.g. 'onnx::Conv_541') and, when the ONNX names carry it, the PyTorch parameter name
    (e.g. 'features.1.conv.0.0.weight', from node '/features/features.1/conv/conv.0/conv.0.0/Conv').
    Fine-tune with the masks fixed (docs/finetune.md), export to ONNX, then
    'deprune-onnx prune tuned.onnx out.onnx --keep-zeros' keeps exactly those zeros.

    \b
    Example:
      deprune-onnx prune mobilenet_v2.onnx pruned.onnx --format dense --dw-ratio 0.78
      deprune-onnx export-masks pruned.plan.json masks.npz
      python -c "import numpy as np; print(list(np.load('masks.npz')))"
    """
    from deprune_onnx.report.masks_export import plan_mask_arrays, save_masks
    from deprune_onnx.onnx_io.load_save import check_output_path
    from deprune_onnx.plan import load_plan

    output = check_output_path(output_path, plan_path)
    plan = load_plan(plan_path)
    arrays = plan_mask_arrays(plan)
    save_masks(output, arrays)
    if not quiet:
        torch_keys = sorted(key for key in arrays if key.endswith(".weight"))
        click.echo(f"wrote {output}: {len(arrays)} keys for the pruned DW layers of {plan_path}"
                   + (f" (PyTorch names, e.g. '{torch_keys[0]}')" if torch_keys else ""))
