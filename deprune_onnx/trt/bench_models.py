"""The DW layer shapes of MobileNetV2, MobileNetV3-Small and EfficientNet-B0, as pruned models for the GPU check.

Why a module: the GPU check (bench/gpu/dr_dwconv_check.py) must time the kernel on the masks the project really
makes (DCP + BWT + HSR, decided per model with its balance step), not on a look-alike rule. So each architecture's
DW layers become a small ONNX model (one graph input per layer: Conv(group=C) with random weights, then the
architecture's activation), and that model goes through the real `prune` pipeline (`prune_model`, method `bh`,
`--format plugin`). The check then reads the packed layers back exactly as `deprune-onnx bench` reads any pruned
model (layer_bench.layers_from_model). Weights are random normal: kernel time depends on the mask structure,
not on the values.

Shapes are the public architectures at 224x224 (torchvision's mobilenet_v2, mobilenet_v3_small and
efficientnet_b0; "same" padding k//2). tests/test_bench_models.py checks the MobileNetV2 rows against the real
model and the EfficientNet-B0 bytes against the 390 MB of issue 8.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
ARCHITECTURES = ("mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0")


@dataclass(frozen=True)
class LayerShape:
    """One DW conv of a public architecture: channels, input H=W, kernel, stride, fused activation."""

    model: str
    index: int
    channels: int
    size: int
    kernel: int
    stride: int
    activation: str  # relu, clip (Relu6), hard_swish or silu, as the rewrite fuses them

    @property
    def pad(self) -> int:
        return self.kernel // 2

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.pad - self.kernel) // self.stride + 1

    @property
    def name(self) -> str:
        """The Conv node name in the generated model (and so the layer name in every table)."""
        return f"{self.model}.dw{self.index:02d}"


def _rows(model: str, rows: list[tuple[int, int, int, int, str]]) -> list[LayerShape]:
    return [LayerShape(model, i, c, h, k, s, a) for i, (c, h, k, s, a) in enumerate(rows)]


# (channels, input size, kernel, stride, activation) in network order.
LAYER_SHAPES: list[LayerShape] = (
    _rows("mobilenet_v2", [
        (32, 112, 3, 1, "clip"), (96, 112, 3, 2, "clip"), (144, 56, 3, 1, "clip"), (144, 56, 3, 2, "clip"),
        (192, 28, 3, 1, "clip"), (192, 28, 3, 1, "clip"), (192, 28, 3, 2, "clip"), (384, 14, 3, 1, "clip"),
        (384, 14, 3, 1, "clip"), (384, 14, 3, 1, "clip"), (384, 14, 3, 1, "clip"), (576, 14, 3, 1, "clip"),
        (576, 14, 3, 1, "clip"), (576, 14, 3, 2, "clip"), (960, 7, 3, 1, "clip"), (960, 7, 3, 1, "clip"),
        (960, 7, 3, 1, "clip")])
    + _rows("mobilenet_v3_small", [
        (16, 112, 3, 2, "relu"), (72, 56, 3, 2, "relu"), (88, 28, 3, 1, "relu"), (96, 28, 5, 2, "hard_swish"),
        (240, 14, 5, 1, "hard_swish"), (240, 14, 5, 1, "hard_swish"), (120, 14, 5, 1, "hard_swish"),
        (144, 14, 5, 1, "hard_swish"), (288, 14, 5, 2, "hard_swish"), (576, 7, 5, 1, "hard_swish"),
        (576, 7, 5, 1, "hard_swish")])
    + _rows("efficientnet_b0", [
        (32, 112, 3, 1, "silu"), (96, 112, 3, 2, "silu"), (144, 56, 3, 1, "silu"), (144, 56, 5, 2, "silu"),
        (240, 28, 5, 1, "silu"), (240, 28, 3, 2, "silu"), (480, 14, 3, 1, "silu"), (480, 14, 3, 1, "silu"),
        (480, 14, 5, 1, "silu"), (672, 14, 5, 1, "silu"), (672, 14, 5, 1, "silu"), (672, 14, 5, 2, "silu"),
        (1152, 7, 5, 1, "silu"), (1152, 7, 5, 1, "silu"), (1152, 7, 5, 1, "silu"), (1152, 7, 3, 1, "silu")])
)


def architecture_layers(model: str) -> list[LayerShape]:
    """The DW layers of one architecture, in network order."""
    layers = [layer for layer in LAYER_SHAPES if layer.model == model]
    if not layers:
        raise ValueError(f"unknown architecture '{model}' (one of {', '.join(ARCHITECTURES)})")
    return layers


def _activation_nodes(layer: LayerShape, x: str, y: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The standard-ONNX activation the rewrite fuses into the custom op (Relu6 as Clip, SiLU as x*Sigmoid(x))."""
    name = layer.name
    if layer.activation == "relu":
        return [helper.make_node("Relu", [x], [y], name=f"{name}/Relu")], []
    if layer.activation == "hard_swish":
        return [helper.make_node("HardSwish", [x], [y], name=f"{name}/HardSwish")], []
    if layer.activation == "clip":
        bounds = [numpy_helper.from_array(np.array(v, np.float32), f"{name}/clip_{side}")
                  for side, v in (("min", 0.0), ("max", 6.0))]
        return [helper.make_node("Clip", [x, bounds[0].name, bounds[1].name], [y], name=f"{name}/Clip")], bounds
    if layer.activation == "silu":
        gate = f"{name}/sigmoid"
        return [helper.make_node("Sigmoid", [x], [gate], name=f"{name}/Sigmoid"),
                helper.make_node("Mul", [x, gate], [y], name=f"{name}/Mul")], []
    raise ValueError(f"{name}: unknown activation '{layer.activation}'")


def dw_layers_model(model: str, seed: int = 0) -> onnx.ModelProto:
    """An ONNX model holding every DW layer of ``model`` side by side (input x<i> -> Conv -> activation -> y<i>).

    Batch is symbolic ("N"), H/W static, weights and biases random normal from ``seed``.
    """
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    inputs, outputs = [], []
    for layer in architecture_layers(model):
        c, k, i = layer.channels, layer.kernel, layer.index
        weight = numpy_helper.from_array(rng.standard_normal((c, 1, k, k)).astype(np.float32), f"{layer.name}.weight")
        bias = numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{layer.name}.bias")
        initializers += [weight, bias]
        conv_out = f"{layer.name}/conv"
        nodes.append(helper.make_node("Conv", [f"x{i}", weight.name, bias.name], [conv_out], name=layer.name,
                                      group=c, kernel_shape=[k, k], strides=[layer.stride] * 2, pads=[layer.pad] * 4))
        act_nodes, act_inits = _activation_nodes(layer, conv_out, f"y{i}")
        nodes += act_nodes
        initializers += act_inits
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["N", c, layer.size, layer.size]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT,
                                                     ["N", c, layer.out_size, layer.out_size]))
    graph = helper.make_graph(nodes, f"{model}_dw_layers", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="deprune-onnx")


def pruned_dw_layers_model(model: str, ratio: float, seed: int = 0, dtype: str = "float32") -> onnx.ModelProto:
    """``dw_layers_model`` pruned by the real pipeline: method bh at DW ratio ``ratio``, written as the custom op."""
    from deprune_onnx.dw.planner import DWOptions  # noqa: PLC0415 - the pipeline is heavy; only the check needs it
    from deprune_onnx.pipeline import PruneOptions, prune_model  # noqa: PLC0415

    options = PruneOptions(dw=DWOptions(method="bh", dw_ratio=ratio), output_format="plugin", dtype=dtype)
    return prune_model(dw_layers_model(model, seed), options).model


ACTIVATION_PARAMS = {"relu": (), "clip": (0.0, 6.0), "silu": ()}  # hard_swish: op.activations.HARD_SWISH_PARAMS


def pruned_bench_layers(model: str, ratio: float, seed: int = 0, group: str = "") -> list:
    """The layers of ``pruned_dw_layers_model`` packed straight from the plan's masks, without the ONNX rewrite.

    Why: the rewrite (op/rewrite.py) needs onnx-graphsurgeon, which the GPU machines lack, and the GPU check must
    import nothing more than torch, onnx and numpy. The masks are the same pipeline's (``prune_model``, method bh,
    format dense) and the packing the rewrite's own (``pack_dr_weights`` with the plan's keep mask), so the layers
    equal what ``layers_from_model(pruned_dw_layers_model(...))`` reads back (tests/test_bench_models.py checks it).
    Returns ``layer_bench.BenchLayer`` objects in network order.
    """
    from deprune_onnx.dw.planner import DWOptions  # noqa: PLC0415 - the pipeline is heavy; only the check needs it
    from deprune_onnx.op.activations import HARD_SWISH_PARAMS  # noqa: PLC0415
    from deprune_onnx.op.attributes import DRConvParams  # noqa: PLC0415
    from deprune_onnx.op.packing import pack_dr_weights  # noqa: PLC0415
    from deprune_onnx.pipeline import PruneOptions, prune_model  # noqa: PLC0415
    from deprune_onnx.trt.layer_bench import BenchLayer  # noqa: PLC0415

    source = dw_layers_model(model, seed)
    weights = {init.name: numpy_helper.to_array(init) for init in source.graph.initializer}
    plan = prune_model(source, PruneOptions(dw=DWOptions(method="bh", dw_ratio=ratio), output_format="dense")).plan
    masks = {layer.name: layer.keep_mask() for layer in plan.dw_layers if layer.method != "none"}
    layers = []
    for shape in architecture_layers(model):
        weight, bias = weights[f"{shape.name}.weight"], weights[f"{shape.name}.bias"]
        keep = masks.get(shape.name, np.ones(weight.shape, dtype=bool))
        packed = pack_dr_weights(weight * keep, bias, keep_mask=keep)
        act_params = HARD_SWISH_PARAMS if shape.activation == "hard_swish" else ACTIVATION_PARAMS[shape.activation]
        params = DRConvParams(channels=shape.channels, kernel_shape=(shape.kernel, shape.kernel),
                              strides=(shape.stride, shape.stride), pads=(shape.pad,) * 4,
                              activation=shape.activation, activation_params=tuple(act_params))
        layers.append(BenchLayer(shape.name, params, packed, shape.size, shape.size, group))
    return layers
