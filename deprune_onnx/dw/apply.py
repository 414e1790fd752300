"""Write a plan's DW masks into a model: the dense masked model (standard Conv nodes, pruned weights zero).

This is the portable output (``--format dense``) and the reference every other form is checked against: the
rewritten custom-op model must compute exactly what this model computes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.graph import GraphIndex, node_attributes, remove_unused
from deprune_onnx.plan import DWLayerPlan
from deprune_onnx.progress import progress


def masked_weight(weight: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Pruned entries set to exactly +0 (not -0), kept entries unchanged, dtype preserved."""
    return np.where(keep, weight, np.zeros((), dtype=weight.dtype)).astype(weight.dtype, copy=False)


def _mask_quantized_weight(model: onnx.ModelProto, index: GraphIndex, weight_name: str, keep: np.ndarray,
                           initializer_position: dict[str, int]) -> bool:
    """Mask a QDQ weight in its integer form: pruned entries become the zero point, which dequantizes to
    exactly 0, so the model stays quantized (TensorRT INT8 reads the Q/DQ pair). Only for an unshared
    initializer -> DequantizeLinear (per-tensor or per-axis, not blocked) -> this conv; returns False otherwise
    and the caller writes a float weight instead."""
    dequantize = index.producer.get(weight_name)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return False
    source = dequantize.input[0]
    attrs = node_attributes(dequantize)
    if source not in initializer_position or source in index.overridable or attrs.get("block_size", 0) or \
            len(index.consumers.get(source, [])) != 1 or len(index.consumers.get(weight_name, [])) != 1:
        return False
    quantized = index.constant(source)
    zero_point = index.constant(dequantize.input[2]) if len(dequantize.input) > 2 and dequantize.input[2] \
        else np.zeros((), dtype=quantized.dtype)
    if zero_point is None or zero_point.ndim > 1:
        return False
    shape = [1] * quantized.ndim
    if zero_point.ndim == 1:
        shape[attrs.get("axis", 1)] = -1
    masked = np.where(keep, quantized, zero_point.astype(quantized.dtype).reshape(shape)).astype(quantized.dtype)
    model.graph.initializer[initializer_position[source]].CopyFrom(numpy_helper.from_array(masked, source))
    return True


def apply_dw_masks(model: onnx.ModelProto, layers: Sequence[DWLayerPlan], *, in_place: bool = False
                   ) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Zero the pruned DW weights of a copy of ``model`` (or of ``model`` itself with ``in_place=True``).

    Returns the model and one record per layer changed: ``layer``, ``weight`` (the tensor written), ``how``
    (``initializer``: rewritten under its name; ``quantized``: the integer QDQ weight; ``new initializer``: a
    copy for this conv) and ``pruned`` (weights set to zero). Raises DepruneError when a layer does not fit.

    A weight initializer used by this conv alone is rewritten under its own name; an int8/uint8 QDQ weight is
    masked in its integer form; a shared weight or one behind another foldable chain (Identity/Cast/Constant)
    gets a new initializer for this conv, so other users keep the original. Layers whose mask keeps everything
    are left untouched (ratio 0 is bit-exact).
    """
    if not in_place:
        model = _copy(model)
    index = GraphIndex(model.graph)
    initializer_position = {t.name: i for i, t in enumerate(model.graph.initializer)}
    replaced_chain = False
    records: list[dict[str, Any]] = []
    taken = set(initializer_position) | {o for n in model.graph.node for o in n.output}
    for layer in progress(layers, "apply", unit="layer"):
        if layer.name not in index.node_position:
            raise DepruneError(f"plan layer '{layer.name}': no such node in the model")
        node = index.node(layer.name)
        if node.op_type != "Conv" or len(node.input) < 2:
            raise DepruneError(f"plan layer '{layer.name}': is a {node.op_type}, not a DW Conv")
        weight = index.constant(node.input[1])
        if weight is None or list(weight.shape) != list(layer.shape):
            shape = None if weight is None else list(weight.shape)
            raise DepruneError(f"plan layer '{layer.name}': weight shape {shape} differs from the plan's "
                               f"{layer.shape} (plan made for another model?)")
        keep = layer.keep_mask()
        if keep.all():
            continue
        weight_name = node.input[1]
        record = {"layer": layer.name, "weight": weight_name, "how": "quantized", "pruned": int(keep.size - keep.sum())}
        records.append(record)
        if _mask_quantized_weight(model, index, weight_name, keep, initializer_position):
            continue
        new_weight = masked_weight(weight, keep)
        sole_user = len(index.consumers.get(weight_name, [])) == 1
        if weight_name in initializer_position and sole_user and weight_name not in index.overridable:
            model.graph.initializer[initializer_position[weight_name]].CopyFrom(
                numpy_helper.from_array(new_weight, weight_name))
            record["how"] = "initializer"
            continue
        new_name = f"{layer.name}.masked_weight"
        while new_name in taken:
            new_name += "_"
        taken.add(new_name)
        model.graph.initializer.append(numpy_helper.from_array(new_weight, new_name))
        node.input[1] = new_name
        record.update(weight=new_name, how="new initializer")
        replaced_chain = True
    if replaced_chain:
        remove_unused(model)
    return model, records


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
