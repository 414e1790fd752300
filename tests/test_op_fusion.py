"""match_activation and no_fusion_reason on hand-built graphs: which activation reading a DW conv's output is
fused (kind, parameters, the nodes it replaces, the tensor it produces), which near-misses are NOT fused, and the
exact phrase the report gives for each refusal. Expected values are literals written here."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from deprune_onnx.op.activations import HARD_SWISH_PARAMS
from deprune_onnx.op.fusion import match_activation, no_fusion_reason

F32_02 = float(np.float32(0.2))


def graph_of(nodes: list[onnx.NodeProto], constants: dict[str, float | np.ndarray], outputs: list[str]
             ) -> tuple[gs.Variable, set[str]]:
    """X -> DW conv 'dw' -> x -> ``nodes``; returns graphsurgeon's x and the graph output names."""
    weight = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "W")
    inits = [weight] + [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in constants.items()]
    conv = helper.make_node("Conv", ["X", "W"], ["x"], name="dw", group=4, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph([conv, *nodes], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                                   [1, 4, 5, 5])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    imported = gs.import_onnx(model)
    return imported.tensors()["x"], {t.name for t in imported.outputs}


def node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=output, **attrs)


def fused(nodes, constants, outputs=("y",)):
    x, graph_outputs = graph_of(nodes, constants, list(outputs))
    found = match_activation(x, graph_outputs)
    if found is None:
        return None, no_fusion_reason(x, graph_outputs)
    return (found.activation, tuple(found.params), found.output.name, [n.name for n in found.nodes]), None


def decomposed(add_inputs=("x", "three"), clip=("zero", "six"), scale_op="Div", scale_inputs=("m", "six"),
               three=3.0, six=6.0, sixth=1.0 / 6.0):
    nodes = [node("Add", list(add_inputs), "a"), node("Clip", ["a", *clip], "c"), node("Mul", ["x", "c"], "m"),
             node(scale_op, list(scale_inputs), "y")]
    return nodes, {"three": three, "zero": 0.0, "six": six, "sixth": sixth, "five": 5.0}


POSITIVE = {
    "hard_sigmoid_attrs": ([node("HardSigmoid", ["x"], "h", alpha=0.25, beta=0.4), node("Mul", ["x", "h"], "y")], {},
                           ("hard_swish", (0.25, float(np.float32(0.4))), "y", ["h", "y"])),
    "hard_sigmoid_defaults": ([node("HardSigmoid", ["x"], "h"), node("Mul", ["h", "x"], "y")], {},
                              ("hard_swish", (F32_02, 0.5), "y", ["h", "y"])),
    "silu_gate_first": ([node("Sigmoid", ["x"], "s"), node("Mul", ["s", "x"], "y")], {},
                        ("silu", (), "y", ["s", "y"])),
    "clip_max_only": ([node("Clip", ["x", "", "six"], "y")], {"six": 6.0}, ("clip", (-np.inf, 6.0), "y", ["y"])),
    "clip_no_bounds": ([node("Clip", ["x"], "y")], {}, ("clip", (-np.inf, np.inf), "y", ["y"])),
    "hard_swish_node": ([node("HardSwish", ["x"], "y")], {}, ("hard_swish", HARD_SWISH_PARAMS, "y", ["y"])),
    "decomposed_div": (*decomposed(), ("hard_swish", HARD_SWISH_PARAMS, "y", ["a", "c", "m", "y"])),
    "decomposed_constant_first": (*decomposed(add_inputs=("three", "x")),
                                  ("hard_swish", HARD_SWISH_PARAMS, "y", ["a", "c", "m", "y"])),
    "decomposed_mul_sixth": (*decomposed(scale_op="Mul", scale_inputs=("m", "sixth")),
                             ("hard_swish", HARD_SWISH_PARAMS, "y", ["a", "c", "m", "y"])),
    "decomposed_sixth_first": (*decomposed(scale_op="Mul", scale_inputs=("sixth", "m")),
                               ("hard_swish", HARD_SWISH_PARAMS, "y", ["a", "c", "m", "y"])),
}


@pytest.mark.parametrize("case", list(POSITIVE))
def test_fused_patterns_give_the_exact_activation_and_nodes(case: str) -> None:
    nodes, constants, expected = POSITIVE[case]
    assert fused(nodes, constants) == (expected, None)


NOT_ADD = "output feeds 2 nodes (Sub 'a', Mul 'm'): an activation is fused only when the conv output feeds nothing " \
          "else, or in x*HardSigmoid(x), x*Sigmoid(x) and the decomposed hard-swish"
TWO = "output feeds 2 nodes (Add 'a', Mul 'm'): an activation is fused only when the conv output feeds nothing " \
      "else, or in x*HardSigmoid(x), x*Sigmoid(x) and the decomposed hard-swish"
GATE = "output feeds 2 nodes ({gate} 'h', Mul 'y'): an activation is fused only when the conv output feeds " \
       "nothing else, or in x*HardSigmoid(x), x*Sigmoid(x) and the decomposed hard-swish"


NEGATIVE = {
    "add_two": (*decomposed(three=2.0), TWO),
    "sub_not_add": ([node("Sub", ["x", "three"], "a"), *decomposed()[0][1:]], decomposed()[1], NOT_ADD),
    "clip_0_5": (*decomposed(clip=("zero", "five")), TWO),
    "clip_runtime": (*decomposed(clip=("zero", "x")), TWO.replace("2 nodes (Add 'a', Mul 'm')",
                                                                  "3 nodes (Add 'a', Clip 'c', Mul 'm')")),
    "div_by_5": (*decomposed(scale_inputs=("m", "five")), TWO),
    "div_reversed": (*decomposed(scale_inputs=("six", "m")), TWO),
    "mul_by_0_2": (*decomposed(scale_op="Mul", scale_inputs=("m", "five")), TWO),
    "mul_of_other": ([node("Add", ["x", "three"], "a"), node("Clip", ["a", "zero", "six"], "c"),
                      node("Mul", ["a", "c"], "m"), node("Div", ["m", "six"], "y"), node("Relu", ["x"], "r")],
                     decomposed()[1], None),
    "gate_used_twice": ([node("Sigmoid", ["x"], "h"), node("Mul", ["x", "h"], "y"), node("Relu", ["h"], "r")], {},
                        GATE.format(gate="Sigmoid")),
    "gate_not_a_gate": ([node("Tanh", ["x"], "h"), node("Mul", ["x", "h"], "y")], {}, GATE.format(gate="Tanh")),
    "hard_sigmoid_squared": ([node("HardSigmoid", ["x"], "h"), node("Mul", ["h", "h"], "y")], {},
                             "output feeds HardSigmoid 'h': not an activation, nothing to fuse"),
}


@pytest.mark.parametrize("case", list(NEGATIVE))
def test_near_misses_are_not_fused(case: str) -> None:
    nodes, constants, reason = NEGATIVE[case]
    outputs = ("y", "r") if any(n.output[0] == "r" for n in nodes) else ("y",)
    result, why = fused(nodes, constants, outputs)
    assert result is None
    if reason is not None:
        assert why == reason


def test_a_decomposed_hard_swish_whose_inner_tensor_is_also_read_is_not_fused() -> None:
    for inner in ("a", "c", "m"):
        nodes, constants = decomposed()
        result, _ = fused(nodes + [node("Relu", [inner], "r")], constants, ("y", "r"))
        assert result is None, inner
        result, _ = fused(nodes, constants, ("y", inner))  # or a graph output
        assert result is None, inner


def test_a_scale_with_a_third_input_is_not_fused() -> None:
    nodes, constants = decomposed(scale_op="Sum", scale_inputs=("m", "six", "six"))
    assert fused(nodes, constants)[0] is None


@pytest.mark.parametrize("nodes, constants, outputs, reason", [
    ([node("Relu", ["x"], "y")], {}, ("y", "x"), "output is a graph output: nothing may be fused into it"),
    ([node("LeakyRelu", ["x"], "y")], {}, ("y",),
     "output feeds LeakyRelu 'y': an activation the op does not implement"),
    ([node("Clip", ["x", "lo", "six"], "y"), node("Relu", ["X"], "lo0"), node("ReduceMin", ["lo0"], "lo",
                                                                                keepdims=0)],
     {"six": 6.0}, ("y",), "output feeds Clip 'y': its bounds are not constants"),
    ([node("Add", ["x", "six"], "y")], {"six": 6.0}, ("y",), "output feeds Add 'y': not an activation, nothing to fuse"),
    ([node("Relu", ["x"], f"y{i}") for i in range(3)], {}, ("y0", "y1", "y2"),
     "output feeds 3 nodes (Relu 'y0', Relu 'y1', Relu 'y2'): an activation is fused only when the conv output "
     "feeds nothing else, or in x*HardSigmoid(x), x*Sigmoid(x) and the decomposed hard-swish"),
    ([node("Relu", ["x"], f"y{i}") for i in range(4)], {}, ("y0", "y1", "y2", "y3"),
     "output feeds 4 nodes (Relu 'y0', Relu 'y1', Relu 'y2', ...): an activation is fused only when the conv "
     "output feeds nothing else, or in x*HardSigmoid(x), x*Sigmoid(x) and the decomposed hard-swish"),
    ([node("Mul", ["x", "six"], "y0"), node("Mul", ["x", "six"], "y1")], {"six": 6.0}, ("y0", "y1"), None),
    ([node("Relu", ["X"], "y")], {}, ("y",), "output is read by no node"),
], ids=["graph_output", "leaky_relu", "clip_runtime", "add", "three", "four", "two_muls", "unread"])
def test_refusals_and_their_exact_phrase(nodes, constants, outputs, reason) -> None:
    result, why = fused(nodes, constants, outputs)
    assert result is None
    if reason is not None:
        assert why == reason


def test_a_clip_bound_from_a_graph_input_is_not_a_constant() -> None:
    result, why = fused([node("Clip", ["x", "X", ""], "y")], {})
    assert result is None and why == "output feeds Clip 'y': its bounds are not constants"


def test_clip_bounds_from_constant_nodes_and_non_scalar_bounds() -> None:
    low = helper.make_node("Constant", [], ["lo"], name="lo", value=numpy_helper.from_array(np.float32(-1.0)))
    assert fused([low, node("Clip", ["x", "lo", ""], "y")], {})[0] == ("clip", (-1.0, np.inf), "y", ["y"])
    wide = helper.make_node("Constant", [], ["lo"], name="lo", value=numpy_helper.from_array(np.zeros(2, np.float32)))
    result, why = fused([wide, node("Clip", ["x", "lo", ""], "y")], {})
    assert result is None and why == "output feeds Clip 'y': its bounds are not constants"
