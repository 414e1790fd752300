"""lower(): turn every DRSparseDepthwiseConv back into standard ONNX (Conv + activation nodes).

Why: ONNX Runtime, Netron-free debugging, and every tool that does not load our TensorRT plugin can then run a
rewritten model. The dense weight comes from ``unpack_dr_weights`` (the exact inverse of the one packer), so
lower(rewrite(m)) has bit-identical weights to the dense masked model. The lowered Conv keeps the custom node's
name (which is the original conv's name); an all-zero bias (the op's "no bias") is not emitted.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.load_save import default_opset
from deprune_onnx.op import spec
from deprune_onnx.op.activations import lower_activation
from deprune_onnx.op.attributes import decode_attributes
from deprune_onnx.op.graphs import export_like, name_factory
from deprune_onnx.op.packing import unpack_dr_weights


def _lower_node(node: gs.Node, opset: int, fresh: Callable[[str], str]) -> list[gs.Node]:
    where = f"node '{node.name}'"
    if len(node.inputs) != 1 or len(node.outputs) != 1:
        raise DepruneError(f"{where}: {spec.OP_TYPE} takes 1 input and 1 output, "
                           f"has {len(node.inputs)} and {len(node.outputs)}")
    params, packed = decode_attributes(node.attrs, where=where)
    weight, bias = unpack_dr_weights(packed, params.out_channels, *params.kernel_shape, k_tile=params.k_tile)
    x, y = node.inputs[0], node.outputs[0]
    node.inputs.clear()
    node.outputs.clear()

    conv_inputs = [x, gs.Constant(fresh(f"{node.name}/weight"), weight)]
    if np.any(bias != 0):
        conv_inputs.append(gs.Constant(fresh(f"{node.name}/bias"), bias))
    conv_output = y if params.activation == "none" else gs.Variable(fresh(f"{node.name}/conv_output"),
                                                                    dtype=weight.dtype)
    conv = gs.Node("Conv", name=node.name, inputs=conv_inputs, outputs=[conv_output], attrs={
        "group": params.channels, "kernel_shape": list(params.kernel_shape), "strides": list(params.strides),
        "pads": list(params.pads), "dilations": list(params.dilations)})
    if params.activation == "none":
        return [conv]
    return [conv, *lower_activation(conv_output, y, params.activation, params.activation_params,
                                    dtype=weight.dtype, name=node.name, opset=opset, fresh=fresh)]


def lower(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every deprune::DRSparseDepthwiseConv replaced by Conv (+ activation).

    A model without the op comes back unchanged (as a copy). The ``deprune`` opset import is dropped.
    """
    graph = gs.import_onnx(model)
    targets = [node for node in graph.nodes if spec.is_custom_op(node.op, node.domain)]
    if not targets:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    fresh = name_factory(graph)
    opset = default_opset(model) or 0
    for node in targets:
        graph.nodes.extend(_lower_node(node, opset, fresh))
    graph.cleanup().toposort()
    return export_like(graph, model)
