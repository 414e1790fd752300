"""Run a model over many samples in ONNX Runtime (CPU), in batches.

The shared models are exported with a static batch of 1. Running one image at a time wastes most of the time in
per-call overhead, so the runner gives the model a symbolic batch dimension (input, outputs; stale value_info
dropped) and falls back to batch 1 when the graph hard-codes its batch (a Reshape to [1, -1], say). A model that
holds deprune's custom op is lowered to standard ops first, when this installation has the lowering. Samples
are prepared in float32 and fed in the model's own input type (a ``prune --dtype float16`` model gets float16);
outputs come back as float32.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

import numpy as np
import onnx

from deprune_onnx.errors import DepruneError
from deprune_onnx.op import spec

if TYPE_CHECKING:
    import onnxruntime as ort

DEFAULT_BATCH = 16


def lower_custom_ops(model: onnx.ModelProto, name: str = "model") -> onnx.ModelProto:
    """Standard-op copy of a model with DRSparseDepthwiseConv nodes (``deprune_onnx.op.lower``), else the model."""
    if not spec.custom_nodes(model):
        return model
    try:
        lowering = importlib.import_module("deprune_onnx.op.lower")
    except ImportError:
        raise DepruneError(f"{name}: holds deprune custom ops (DRSparseDepthwiseConv) and this installation cannot "
                           "lower them to standard ops (deprune_onnx.op.lower is missing); evaluate the "
                           "'prune --format dense' output instead") from None
    return lowering.lower(model)


def with_dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose first input and all outputs have a symbolic batch dimension and no stale value_info."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    for value in list(copy.graph.input[:1]) + list(copy.graph.output):
        shape = value.type.tensor_type.shape
        if value.type.HasField("tensor_type") and len(shape.dim):
            shape.dim[0].Clear()
            shape.dim[0].dim_param = "batch"
    return copy


def make_session(model: onnx.ModelProto, threads: int = 0) -> "ort.InferenceSession":
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # batch-dim warnings and the batch-1 fallback are expected, not news
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for models it cannot run
        raise DepruneError(f"ONNX Runtime cannot load the model ({type(exc).__name__}: {exc})") from None


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def image_input_dtype(model: onnx.ModelProto) -> np.dtype:
    """numpy dtype of the model's first non-initializer input (float32 for most models, float16 after
    ``prune --dtype float16``): what every sample is cast to before it is fed."""
    inputs = _graph_inputs(model)
    if not inputs:
        raise DepruneError("the model has no input")
    elem_type = inputs[0].type.tensor_type.elem_type
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)) if elem_type else np.dtype(np.float32)


class ModelRunner:
    """One ORT session of a model (lowered, batch made dynamic) that maps [N, ...] inputs to its first output,
    each sample cast to the model's input type (``input_dtype``)."""

    def __init__(self, model: onnx.ModelProto, name: str = "model", batch_size: int = DEFAULT_BATCH) -> None:
        model = lower_custom_ops(model, name)
        inputs = _graph_inputs(model)
        if len(inputs) != 1:
            raise DepruneError(f"{name}: expected one image input, the model has {len(inputs)} inputs")
        self.name = name
        self.input_name = inputs[0].name
        self.input_shape = self.image_input_shape(model)
        self.input_dtype = image_input_dtype(model)
        self._model = model
        self.batch_size = max(1, batch_size)
        self._session = make_session(with_dynamic_batch(model))

    @staticmethod
    def image_input_shape(model: onnx.ModelProto) -> tuple[int | str, ...]:
        """Shape of the model's first non-initializer input (dims as ints or symbolic names)."""
        inputs = _graph_inputs(model)
        if not inputs:
            raise DepruneError("the model has no input")
        return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                     for d in inputs[0].type.tensor_type.shape.dim)

    def _fall_back_to_batch_one(self) -> None:
        self.batch_size = 1
        self._session = make_session(self._model)

    def run(self, inputs: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """First output of the model for every row of ``inputs``, as float32 [N, ...] (the output's own shape
        after the batch axis)."""
        expected = self.input_shape[1:]
        if tuple(inputs.shape[1:]) != tuple(d for d in expected) and all(isinstance(d, int) for d in expected):
            raise DepruneError(f"{self.name}: input '{self.input_name}' wants [N, {', '.join(map(str, expected))}], "
                               f"the preprocessing gives [N, {', '.join(map(str, inputs.shape[1:]))}] "
                               "(choose another --preprocess)")
        outputs: list[np.ndarray] = []
        start = 0
        while start < len(inputs):
            batch = inputs[start:start + self.batch_size]
            try:
                result = self._session.run(None, {self.input_name: batch.astype(self.input_dtype, copy=False)})[0]
            except Exception as exc:  # a graph that hard-codes batch 1: run it one sample at a time
                if self.batch_size == 1:
                    message = " ".join(str(exc).split())
                    raise DepruneError(f"{self.name}: ONNX Runtime failed ({type(exc).__name__}: {message})") \
                        from None
                self._fall_back_to_batch_one()
                continue
            outputs.append(np.asarray(result, dtype=np.float32))
            start += len(batch)
            if progress is not None:
                progress(len(batch))
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)
