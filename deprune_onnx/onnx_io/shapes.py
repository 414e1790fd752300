"""Static shapes of every tensor, by ONNX shape inference on a weightless copy of the model.

Inference only needs initializer dims, not their bytes, so big weights are replaced by data-less stubs: the
copy costs kilobytes instead of the model's size, and models above protobuf's 2 GB limit still work. The copy
keeps the model-local functions and every opset import: without them a call of a function is an unknown op and
every shape after it is lost.
"""
from __future__ import annotations

import onnx
from onnx import shape_inference

from deprune_onnx.onnx_io.proto_stream import tensor_nbytes

# Small initializers keep their data: Reshape targets and similar shape constants need their values.
_KEEP_DATA_BELOW_BYTES = 4096

Shape = tuple[int | str | None, ...]


def conv_output_size(size: int, pad_begin: int, pad_end: int, kernel: int, stride: int, dilation: int) -> int:
    """Output length of a convolution along one axis (ONNX Conv, floor mode; the op spec's H_out/W_out):
    floor((size + pad_begin + pad_end - dilation*(kernel-1) - 1) / stride) + 1."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _weightless_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)  # inference runs through calls of model-local functions
    skeleton.graph.name = model.graph.name
    skeleton.graph.node.extend(model.graph.node)
    skeleton.graph.input.extend(model.graph.input)
    skeleton.graph.output.extend(model.graph.output)
    for tensor in model.graph.initializer:
        if tensor_nbytes(tensor) < _KEEP_DATA_BELOW_BYTES:
            skeleton.graph.initializer.append(tensor)
        else:
            skeleton.graph.initializer.append(onnx.TensorProto(name=tensor.name, data_type=tensor.data_type,
                                                               dims=tensor.dims))
    return skeleton


def _dims(value: onnx.ValueInfoProto) -> Shape | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def infer_tensor_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Map tensor name -> shape (ints, symbolic names or None per dim) for every tensor inference could type.

    Inference failures (custom ops, odd graphs) are not fatal: whatever could be inferred is returned.
    """
    try:
        inferred = shape_inference.infer_shapes(_weightless_copy(model), strict_mode=False)
        graph = inferred.graph
    except Exception:  # a model shape inference cannot handle still gets its declared shapes
        graph = model.graph
    shapes: dict[str, Shape] = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = _dims(value)
        if dims is not None:
            shapes[value.name] = dims
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    return shapes


def concrete(shape: Shape | None) -> tuple[int, ...] | None:
    """The shape with a symbolic batch dim taken as 1; None when any other dim is unknown."""
    if shape is None:
        return None
    dims = [1 if index == 0 and not isinstance(dim, int) else dim for index, dim in enumerate(shape)]
    if not all(isinstance(dim, int) for dim in dims):
        return None
    return tuple(int(dim) for dim in dims)
