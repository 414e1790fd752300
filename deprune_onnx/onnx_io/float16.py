"""Float16 conversion of a (pruned, possibly rewritten) model for TensorRT 11, which takes precision from the
model's tensor types (strongly typed networks) instead of builder flags.

Built on onnxconverter-common's float16 converter, the one Polygraphy's ``--fp-to-fp16`` uses: it converts
float32 initializers, Constant values, tensor attributes, value_info and graph inputs/outputs, and keeps ops
without float16 kernels (its default block list) in float32 behind Casts. Its treatment of our custom op is
exactly what the op spec asks for: DRSparseDepthwiseConv is not on the block list, so its input and output
become float16 and its float TENSOR attributes (``tap_values``, ``bias``) are converted, while the int32
``kept_counts``/``tap_indices`` and the float ``activation_params`` attribute stay as they are.
Two documented choices of the converter carry over: nonzero magnitudes below 1e-7 become +-1e-7 (instead of
flushing to 0, so a kept tap never silently turns into a pruned one) and magnitudes above 1e4 are clamped to 1e4.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from deprune_onnx.errors import DepruneError


def convert_to_float16(model: onnx.ModelProto, *, in_place: bool = False
                       ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A float16 copy of ``model`` (or ``model`` itself converted, with ``in_place=True``): weights, activations,
    graph inputs and outputs, packed op weights. Returns the model and its record: how many initializers and
    node attributes now hold float16 tensors.

    Raises DepruneError when the model is already float16 or onnxconverter-common is not installed.
    """
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise DepruneError("float16 conversion needs onnxconverter-common: pip install onnxconverter-common") \
            from None
    if in_place:
        copy = model
    else:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
    try:
        with warnings.catch_warnings():
            # The converter warns once per tensor that has a value it clamps; the module docstring says what.
            warnings.simplefilter("ignore", UserWarning)
            converted = float16.convert_float_to_float16(copy, keep_io_types=False)
        return converted, {"dtype": "float16", "float16_initializers": sum(
            t.data_type == onnx.TensorProto.FLOAT16 for t in converted.graph.initializer)}
    except ValueError as exc:
        if "already converted to float16" in str(exc):
            raise DepruneError("the model is already float16; convert the float32 model instead") from None
        raise


def is_float16(model: onnx.ModelProto) -> bool:
    """True when the model's first graph input (the image) is float16, as after ``prune --dtype float16``."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    return bool(inputs) and inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def _tensor_to_float32(tensor: onnx.TensorProto) -> None:
    if tensor.data_type == onnx.TensorProto.FLOAT16:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))


def convert_to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of a float16 model: the inverse of ``convert_to_float16`` for training, which needs float32
    weights (Adam's and SGD's updates underflow in float16).

    float16 initializers, Constant/ConstantOfShape values and tensor attributes become float32, ``Cast`` to
    float16 becomes ``Cast`` to float32 (the converter's Casts around ops it kept in float32 then do nothing), and
    graph inputs, outputs and value_info of type float16 become float32. Every value is exact (float16 -> float32
    loses nothing). Subgraphs (If/Loop bodies) are refused: the converter's own ones are not inverted here.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    for tensor in graph.initializer:
        _tensor_to_float32(tensor)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH or attribute.type == onnx.AttributeProto.GRAPHS:
                raise DepruneError(f"node '{node.name}': float16 -> float32 of a model with subgraphs "
                                   f"({node.op_type}) is not supported")
            if attribute.type == onnx.AttributeProto.TENSOR:
                _tensor_to_float32(attribute.t)
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == onnx.TensorProto.FLOAT16:
                attribute.i = onnx.TensorProto.FLOAT
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return copy
