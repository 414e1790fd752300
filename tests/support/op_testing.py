"""Helpers shared by the DRSparseDepthwiseConv tests: small generated graphs, ORT runs, masks, errors."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import helper, numpy_helper

from deprune_onnx.op.spec import custom_nodes  # noqa: F401  (re-exported for the op tests)
from support.samples import SAMPLE_MODEL_PATHS as MODEL_PATHS, SAMPLES_DIR as MODELS_DIR, imagenet_samples


def max_rel_err(actual: np.ndarray, reference: np.ndarray) -> float:
    """max |actual - reference| / max |reference|: the relative error of the op spec's tolerances, safe at zeros."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    scale = max(float(np.abs(reference).max()), np.finfo(np.float32).tiny)
    return float(np.abs(actual - reference).max() / scale)


def run_ort(model: onnx.ModelProto | str | Path, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of ``model`` (a proto or a file) on ``feeds``, in ONNX Runtime on the CPU (two threads)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def random_feeds(model: onnx.ModelProto, seed: int = 0, batch: int = 1,
                 dynamic: int | None = None) -> dict[str, np.ndarray]:
    """Standard normal values for every graph input that is not an initializer: a dynamic axis 0 gets ``batch``,
    other dynamic axes ``dynamic`` (default: ``batch`` too)."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.dim_value > 0 else (batch if axis == 0 or dynamic is None else dynamic)
                for axis, d in enumerate(value.type.tensor_type.shape.dim)]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def dw_convs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Node name -> weight of every DW conv (group == C_in, weight [m*C_in, 1, kh, kw] initializer)."""
    initializers = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and node.input[1] in initializers:
            weight = numpy_helper.to_array(initializers[node.input[1]])
            if weight.ndim == 4 and weight.shape[1] == 1 and group > 1:
                found[node.name] = weight
    return found


def random_masks(model: onnx.ModelProto, keep: float = 0.5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.random(weight.shape) < keep for name, weight in dw_convs(model).items()}


def dense_masked(model: onnx.ModelProto, masks: Mapping[str, np.ndarray],
                 zero_kept: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The dense masked model: each named conv's weight times its mask (and ``zero_kept`` taps set to 0)."""
    graph = gs.import_onnx(model)
    for node in graph.nodes:
        if node.name in masks:
            weight = node.inputs[1].values * masks[node.name]
            if zero_kept is not None:
                weight = np.where(zero_kept[node.name], np.zeros_like(weight), weight)
            node.inputs[1] = gs.Constant(f"{node.name}/masked_weight", weight.astype(node.inputs[1].values.dtype))
    graph.cleanup()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    return out


def conv_weights_by_node(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: initializers[n.input[1]] for n in model.graph.node if n.op_type == "Conv"}


def orphan_initializers(model: onnx.ModelProto) -> set[str]:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    return {t.name for t in model.graph.initializer} - used


def dangling_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes none of whose outputs is read by a node or is a graph output."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if not used.intersection(n.output)]


def is_toposorted(model: onnx.ModelProto) -> bool:
    known = {v.name for v in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    for node in model.graph.node:
        if any(name not in known for name in node.input):
            return False
        known.update(node.output)
    return True


def activation_nodes(kind: str, x: str, y: str, const: dict[str, np.ndarray]) -> list[onnx.NodeProto]:
    """Standard ONNX nodes of an activation pattern from tensor x to tensor y, as exporters write them.

    Constants go into ``const`` (name -> value) to become initializers.
    """
    if kind == "relu":
        return [helper.make_node("Relu", [x], [y], name="act")]
    if kind == "relu6":
        const.update(lo=np.array(0, np.float32), hi=np.array(6, np.float32))
        return [helper.make_node("Clip", [x, "lo", "hi"], [y], name="act")]
    if kind == "clip_min_only":
        const.update(lo=np.array(-1.5, np.float32))
        return [helper.make_node("Clip", [x, "lo"], [y], name="act")]
    if kind == "clip_constant_nodes":
        return [helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.array(-1, np.float32))),
                helper.make_node("Constant", [], ["hi"], value=numpy_helper.from_array(np.array(2, np.float32))),
                helper.make_node("Clip", [x, "lo", "hi"], [y], name="act")]
    if kind == "hard_swish":
        return [helper.make_node("HardSwish", [x], [y], name="act")]
    if kind == "hard_sigmoid_mul":
        return [helper.make_node("HardSigmoid", [x], ["gate"], name="gate", alpha=0.2, beta=0.5),
                helper.make_node("Mul", ["gate", x], [y], name="act")]
    if kind == "silu":
        return [helper.make_node("Sigmoid", [x], ["gate"], name="gate"),
                helper.make_node("Mul", [x, "gate"], [y], name="act")]
    if kind == "decomposed_hard_swish":
        const.update(three=np.array(3, np.float32), zero=np.array(0, np.float32), six=np.array(6, np.float32))
        return [helper.make_node("Add", [x, "three"], ["shifted"], name="add"),
                helper.make_node("Clip", ["shifted", "zero", "six"], ["clipped"], name="clip"),
                helper.make_node("Mul", [x, "clipped"], ["product"], name="mul"),
                helper.make_node("Div", ["product", "six"], [y], name="act")]
    if kind == "none":
        return [helper.make_node("Identity", [x], [y], name="act")]
    raise ValueError(kind)


def dw_model(weight: np.ndarray, bias: np.ndarray | None = None, *, activation: str = "none",
             strides: Sequence[int] = (1, 1), pads: Sequence[int] = (1, 1, 1, 1), dilations: Sequence[int] = (1, 1),
             channels: int | None = None, batch: int | str = "N", hw: tuple[int, int] = (9, 11),
             opset: int = 17, extra_conv_attrs: Mapping[str, object] | None = None) -> onnx.ModelProto:
    """X -> DW Conv 'dw' (-> activation pattern) -> Y, with a dynamic batch."""
    c_in = channels if channels is not None else weight.shape[0]
    const: dict[str, np.ndarray] = {"W": weight}
    inputs = ["X", "W"]
    if bias is not None:
        const["B"] = bias
        inputs.append("B")
    attrs = dict(group=c_in, kernel_shape=list(weight.shape[2:]), strides=list(strides), dilations=list(dilations))
    attrs.update(extra_conv_attrs or {"pads": list(pads)})
    nodes = [helper.make_node("Conv", inputs, ["conv_out"], name="dw", **attrs)]
    nodes += activation_nodes(activation, "conv_out", "Y", const)
    dtype = helper.np_dtype_to_tensor_dtype(weight.dtype)
    graph = helper.make_graph(
        nodes, "dw", [helper.make_tensor_value_info("X", dtype, [batch, c_in, *hw])],
        [helper.make_tensor_value_info("Y", dtype, [batch, weight.shape[0], "H_out", "W_out"])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in const.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model

