"""``deprune-onnx inspect``: list the DW and PW layers, DSConv blocks and skipped layers of a model."""
from __future__ import annotations

import json

import click


def _format_table(model_path: str, data: dict) -> str:
    from deprune_onnx.report.build import short_name

    lines = [f"{model_path}: {len(data['dw_layers'])} DW, {len(data['pw_layers'])} PW, "
             f"{len(data['se_convs'])} SE 1x1 convs, {len(data['blocks'])} DSConv blocks"
             + (f" ({data['lowered_custom_ops']} DRSparseDepthwiseConv node(s) read as the Conv they compute)"
                if data["lowered_custom_ops"] else "")]
    header = f"{'DW layer':<44} {'C':>5} {'m':>2} {'k':>5} {'s':>5} {'d':>3} {'G':>3} {'params':>8} " \
             f"{'MACs':>11} {'sparsity':>8}  block"
    lines += ["", header, "-" * len(header)]
    for layer in data["dw_layers"]:
        macs = f"{layer['macs']:,}" if layer["macs"] is not None else "?"
        lines.append(f"{short_name(layer['name'], 44):<44} {layer['in_channels']:>5} {layer['depth_multiplier']:>2} "
                     f"{'x'.join(map(str, layer['kernel'])):>5} {'x'.join(map(str, layer['strides'])):>5} "
                     f"{layer['dilations'][0]:>3} {layer['subgemms']:>3} {layer['params']:>8} {macs:>11} "
                     f"{layer['sparsity']:>8.3f}  {layer['block']}")
    lines += ["", f"{'block':>5}  {'PW-conv1 (expansion)':<36} {'PW-conv2 (projection)':<36} SE  residual"]
    for block in data["blocks"]:
        lines.append(f"{block['index']:>5}  {short_name(block['expand_pw'] or '-', 36):<36} "
                     f"{short_name(block['project_pw'] or '-', 36):<36} {len(block['se_convs']):>2}  "
                     f"{block['residual_add'] or '-'}")
    for skipped in data["skipped"]:
        lines.append(f"skipped {skipped['name']} ({skipped['op_type']}): {skipped['reason']}")
    return "\n".join(lines)


@click.command("inspect")
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")
def command(model_path: str, as_json: bool) -> None:
    """Show the depthwise (DW) and pointwise (PW) layers DEPrune would work on.

    For every DW layer: channels C, depth multiplier m, kernel, stride, dilation, sub-GEMM count
    G = ceil(C*m/32), parameters, MACs at the model's input shape (batch 1 if dynamic), current sparsity and
    its DSConv block (PW-conv1 -> DW -> [SE] -> PW-conv2 [-> residual Add]). Layers that cannot be handled are
    listed with the reason. A pruned model with DRSparseDepthwiseConv nodes ('prune --format plugin') is read
    through the op's ONNX Runtime reference (each node lowered to the masked Conv it computes), so its DW layers,
    their sparsity and blocks show as in the dense form.

    \b
    Example:
      deprune-onnx inspect samples/mobilenet_v2_torchvision.onnx
      deprune-onnx inspect model.onnx --json | jq '.dw_layers[].name'
    """
    from deprune_onnx.analysis import analyze
    from deprune_onnx.evaluation.runner import lower_custom_ops
    from deprune_onnx.op import spec
    from deprune_onnx.onnx_io.folding import fold_conv_weight_chains
    from deprune_onnx.onnx_io.graph import ensure_unique_node_names
    from deprune_onnx.onnx_io.load_save import load_model

    model = load_model(model_path)
    lowered = len(spec.custom_nodes(model))
    model = lower_custom_ops(model, model_path)
    ensure_unique_node_names(model)
    fold_conv_weight_chains(model)  # what prune folds before it analyses (tf2onnx's Reshape(Transpose(w)))
    data = {**analyze(model).to_dict(), "lowered_custom_ops": lowered}
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(_format_table(model_path, data))
