"""Small depthwise-separable ONNX graphs built in code, for tests that need a known structure."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def dsconv_model(channels: int = 48, kernel: int = 3, stride: int = 1, multiplier: int = 1,
                 size: int = 12, expand: int = 2, residual: bool = False, dilation: int = 1,
                 pads: tuple[int, int, int, int] | None = None, seed: int = 0, opset: int = 13
                 ) -> onnx.ModelProto:
    """input [1,C,H,W] -> PW expand + Relu -> DW (k, stride, multiplier) + Relu -> PW project [-> + input]."""
    rng = np.random.default_rng(seed)
    hidden = channels * expand
    dw_out = hidden * multiplier
    if pads is None:
        half = dilation * (kernel - 1) // 2
        pads = (half, half, half, half)
    inits = [
        numpy_helper.from_array(rng.standard_normal((hidden, channels, 1, 1)).astype(np.float32) * 0.3, "w_expand"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32) * 0.1, "b_expand"),
        numpy_helper.from_array(rng.standard_normal((dw_out, 1, kernel, kernel)).astype(np.float32), "w_dw"),
        numpy_helper.from_array(rng.standard_normal(dw_out).astype(np.float32) * 0.1, "b_dw"),
        numpy_helper.from_array(rng.standard_normal((channels, dw_out, 1, 1)).astype(np.float32) * 0.2,
                                "w_project"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w_expand", "b_expand"], ["expand"], name="expand_pw",
                         kernel_shape=[1, 1]),
        helper.make_node("Relu", ["expand"], ["expand_act"], name="expand_relu"),
        helper.make_node("Conv", ["expand_act", "w_dw", "b_dw"], ["dw"], name="dw", group=hidden,
                         kernel_shape=[kernel, kernel], strides=[stride, stride], pads=list(pads),
                         dilations=[dilation, dilation]),
        helper.make_node("Relu", ["dw"], ["dw_act"], name="dw_relu"),
        helper.make_node("Conv", ["dw_act", "w_project"], ["project"], name="project_pw", kernel_shape=[1, 1]),
    ]
    output = "project"
    if residual and stride == 1:
        nodes.append(helper.make_node("Add", ["project", "input"], ["output"], name="residual_add"))
        output = "output"
    graph = helper.make_graph(
        nodes, "dsconv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model
