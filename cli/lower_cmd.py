"""``deprune-onnx lower``: write a copy of a model with every DRSparseDepthwiseConv turned back into Conv."""
from __future__ import annotations

import click


@click.command("lower")
@click.argument("input_path", metavar="IN.onnx")
@click.argument("output_path", metavar="OUT.onnx")
def command(input_path: str, output_path: str) -> None:
    """Replace every deprune::DRSparseDepthwiseConv by a standard Conv (+ its fused activation).

    The result runs in ONNX Runtime and any other ONNX tool, with the exact dense masked weights of the
    custom op; use it to check or fine-tune a model written by `prune --format plugin`.

    \b
    Example:
      deprune-onnx lower pruned.onnx pruned_dense.onnx
    """
    import onnx

    from deprune_onnx.errors import DepruneError
    from deprune_onnx.onnx_io.load_save import check_output_path, load_model, save_model
    from deprune_onnx.op import spec
    from deprune_onnx.op.lower import lower

    model = load_model(input_path)
    output = check_output_path(output_path, input_path)
    count = len(spec.custom_nodes(model))
    lowered = lower(model)
    try:
        onnx.checker.check_model(lowered)
    except onnx.checker.ValidationError as exc:
        raise DepruneError(f"{input_path}: the lowered model is not valid ONNX ({exc})") from None
    save_model(lowered, output)
    if count == 0:
        click.echo(f"{input_path} has no {spec.OP_TYPE} nodes; wrote an unchanged copy to {output}", err=True)
    else:
        click.echo(f"lowered {count} {spec.OP_TYPE} node(s) to Conv: {output}")
