"""Depthwise-separable networks of any shape, built in code, for the bad-input corpus and the property tests.

One ``BlockSpec`` per DSConv block: [PW expand + act] -> DW (k, stride, pads, multiplier) + act -> [SE] ->
PW project [-> residual Add]. Activations are emitted the way exporters emit them (Relu, Clip for Relu6,
x*HardSigmoid(x) for hard-swish, x*Sigmoid(x) for SiLU), so the analysis sees realistic graphs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ACTIVATIONS = ("none", "relu", "relu6", "hardswish", "silu")


@dataclass(frozen=True)
class BlockSpec:
    channels: int                     # block input channels
    out_channels: int
    expand: int = 2                   # hidden = channels * expand; 1 = no expansion PW
    kernel: int = 3
    stride: int = 1
    multiplier: int = 1
    pads: tuple[int, int, int, int] | None = None  # None: symmetric "same"
    activation: str = "relu"
    se: bool = False
    se_scale_first: bool = False  # Mul(gate, x), as torchvision exports it, instead of Mul(x, gate)
    residual: bool = False

    def resolved_pads(self) -> tuple[int, int, int, int]:
        half = (self.kernel - 1) // 2
        return self.pads if self.pads is not None else (half, half, self.kernel - 1 - half, self.kernel - 1 - half)

    def keeps_spatial_size(self) -> bool:
        top, left, bottom, right = self.resolved_pads()
        return self.stride == 1 and top + bottom == self.kernel - 1 and left + right == self.kernel - 1

    def has_residual(self) -> bool:
        return self.residual and self.channels == self.out_channels and self.keeps_spatial_size()


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def weight(self, stem: str, shape: tuple[int, ...], scale: float) -> str:
        name = self.fresh(stem)
        self.initializers.append(numpy_helper.from_array(
            (self.rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], stem: str, **attrs: object) -> str:
        output = self.fresh(stem)
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.fresh(f"{stem}/{op}"), **attrs))
        return output

    def conv(self, x: str, c_in: int, c_out: int, kernel: int, stem: str, group: int = 1, stride: int = 1,
             pads: tuple[int, int, int, int] = (0, 0, 0, 0), bias: bool = True) -> str:
        fan_in = c_in // group * kernel * kernel
        inputs = [x, self.weight(f"{stem}.weight", (c_out, c_in // group, kernel, kernel), 1.0 / np.sqrt(fan_in))]
        if bias:
            inputs.append(self.weight(f"{stem}.bias", (c_out,), 0.1))
        return self.node("Conv", inputs, stem, group=group, kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=list(pads))

    def activation(self, x: str, kind: str, stem: str) -> str:
        if kind == "none":
            return x
        if kind == "relu":
            return self.node("Relu", [x], stem)
        if kind == "relu6":
            low, high = self.fresh(f"{stem}.min"), self.fresh(f"{stem}.max")
            self.initializers += [numpy_helper.from_array(np.array(0, np.float32), low),
                                  numpy_helper.from_array(np.array(6, np.float32), high)]
            return self.node("Clip", [x, low, high], stem)
        gate = self.node("HardSigmoid", [x], stem, alpha=1.0 / 6, beta=0.5) if kind == "hardswish" \
            else self.node("Sigmoid", [x], stem)
        return self.node("Mul", [x, gate], stem)


def dsconv_network(blocks: list[BlockSpec], size: int = 16, seed: int = 0, opset: int = 13,
                   batch: int | str = 1) -> onnx.ModelProto:
    """A model ``input [batch, C0, size, size] -> blocks -> output`` with random (seeded) float32 weights."""
    b = _Builder(seed)
    x = "input"
    for index, spec in enumerate(blocks):
        stem = f"blocks.{index}"
        block_input = x
        hidden = spec.channels
        if spec.expand > 1:
            hidden = spec.channels * spec.expand
            x = b.activation(b.conv(x, spec.channels, hidden, 1, f"{stem}.expand"), spec.activation,
                             f"{stem}.expand_act")
        dw_channels = hidden * spec.multiplier
        x = b.conv(x, hidden, dw_channels, spec.kernel, f"{stem}.dw", group=hidden, stride=spec.stride,
                   pads=spec.resolved_pads())
        x = b.activation(x, spec.activation, f"{stem}.dw_act")
        if spec.se:
            squeezed = max(1, dw_channels // 4)
            pooled = b.node("GlobalAveragePool", [x], f"{stem}.se_pool")
            reduced = b.node("Relu", [b.conv(pooled, dw_channels, squeezed, 1, f"{stem}.se_reduce")],
                             f"{stem}.se_relu")
            gate = b.node("HardSigmoid", [b.conv(reduced, squeezed, dw_channels, 1, f"{stem}.se_expand")],
                          f"{stem}.se_gate", alpha=1.0 / 6, beta=0.5)
            x = b.node("Mul", [gate, x] if spec.se_scale_first else [x, gate], f"{stem}.se_scale")
        x = b.conv(x, dw_channels, spec.out_channels, 1, f"{stem}.project")
        if spec.has_residual():
            x = b.node("Add", [x, block_input], f"{stem}.residual")
    b.nodes.append(helper.make_node("Identity", [x], ["output"], name="output_identity"))
    graph = helper.make_graph(
        b.nodes, "dsconv_network",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, blocks[0].channels, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].CopyFrom(next(v for v in inferred.graph.output if v.name == "output"))
    return model


def two_block_model(seed: int = 0) -> onnx.ModelProto:
    """Two small blocks (DW channels 96 and 64): enough for 'one layer skipped, the other pruned' cases."""
    return dsconv_network([BlockSpec(16, 16, expand=6, residual=True), BlockSpec(16, 24, expand=4, stride=2)],
                          size=12, seed=seed)
