"""Small generated models whose output is not class scores (issue #12 item 5): a text-detector-like DSConv net
ending in a sigmoid probability map [N, 1, H, W], a CTC-recogniser-like one ending in per-step class
probabilities [N, T, C], and a degenerate one whose softmax runs over a single channel (constant 1)."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from support.dsconv_graphs import BlockSpec, dsconv_network

SIZE = 32
SEQUENCE_CLASSES = 8


def _network(out_channels: int, seed: int) -> onnx.ModelProto:
    return dsconv_network([BlockSpec(3, 16, expand=4, activation="relu6"),
                           BlockSpec(16, out_channels, expand=4, activation="hardswish")], size=SIZE, seed=seed)


def _ending(model: onnx.ModelProto, nodes: list[onnx.NodeProto], shape: list[int]) -> onnx.ModelProto:
    """``model`` with ``nodes`` after its output 'output' (renamed 'features'); the last node writes 'output'."""
    graph = model.graph
    graph.node[-1].output[0] = "features"
    graph.node.extend(nodes)
    graph.output[0].CopyFrom(helper.make_tensor_value_info("output", TensorProto.FLOAT, shape))
    onnx.checker.check_model(model)
    return model


def detector(seed: int = 0) -> onnx.ModelProto:
    """input [1, 3, 32, 32] -> two DSConv blocks -> 1 channel -> Sigmoid: a probability map [1, 1, 32, 32]."""
    return _ending(_network(1, seed), [helper.make_node("Sigmoid", ["features"], ["output"], name="probability")],
                   [1, 1, SIZE, SIZE])


def recogniser(seed: int = 0) -> onnx.ModelProto:
    """input [1, 3, 32, 32] -> blocks -> 8 channels -> mean over H -> [1, T=32, C=8] -> Softmax over C."""
    return _ending(_network(SEQUENCE_CLASSES, seed), [
        helper.make_node("ReduceMean", ["features"], ["columns"], name="pool_height", axes=[2], keepdims=0),
        helper.make_node("Transpose", ["columns"], ["steps"], name="time_major", perm=[0, 2, 1]),
        helper.make_node("Softmax", ["steps"], ["output"], name="per_step", axis=-1)],
        [1, SIZE, SEQUENCE_CLASSES])


def constant_map(seed: int = 0) -> onnx.ModelProto:
    """A map through a Softmax over its single channel: every output is exactly 1, whatever the weights."""
    return _ending(_network(1, seed), [helper.make_node("Softmax", ["features"], ["output"], name="one_class",
                                                        axis=1)], [1, 1, SIZE, SIZE])
