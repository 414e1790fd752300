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

import onnx

from deprune_onnx.errors import DepruneError


def convert_to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model``: weights, activations, graph inputs and outputs, packed op weights.

    Raises DepruneError when the model is already float16 or onnxconverter-common is not installed.
    """
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise DepruneError("float16 conversion needs onnxconverter-common: pip install onnxconverter-common") \
            from None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        with warnings.catch_warnings():
            # The converter warns once per tensor that has a value it clamps; the module docstring says what.
            warnings.simplefilter("ignore", UserWarning)
            return float16.convert_float_to_float16(copy, keep_io_types=False)
    except ValueError as exc:
        if "already converted to float16" in str(exc):
            raise DepruneError("the model is already float16; convert the float32 model instead") from None
        raise
