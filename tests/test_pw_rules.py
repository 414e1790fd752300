"""Each operator rule of the PW dependency graph on a small hand-built graph: the exact reason a group is left
alone, or the exact members (tensor, offset, channels) and edits of a group that passes through, and for the
pass-through cases exact removal of channels whose zeros the TEST plants (compared in ONNX Runtime).

Every graph is stem -> PW conv (the origin, C = 16 channels) -> the operator under test -> a reader. Expected
values are literals or names the test itself gave the nodes; nothing is derived from the graph under test.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.pw import apply_pw_plan, build_dependency_graph
from deprune_onnx.pw.dependency import ChannelGroup, RewriteSlice, RewriteSplit, SetGroupAttribute, SetShapeEntry, SliceConstant
from support.pw_graphs import GraphBuilder, sized_plan, weight
from test_pw_offsets import assert_same_outputs, zero_filters

C = 16
f32 = np.float32
i64 = np.int64


def node_of(tensor: str) -> str:
    return tensor.removesuffix("_out0")


def chain(build: Callable[[GraphBuilder, str], list[str]], shape: tuple[int, ...] = (1, 3, 4, 4), opset: int = 13
          ) -> tuple[onnx.ModelProto, str]:
    """stem (3 -> 8) -> relu -> PW conv (8 -> C) = x -> build(g, x) -> the outputs it returns."""
    g = GraphBuilder(seed=5)
    x = g.conv(g.relu(g.conv("input", 3, 8, kernel=3)), 8, C)
    model = g.model("input", list(shape), build(g, x), opset=opset)
    return model, x


def groups_with(model: onnx.ModelProto, tensor: str) -> list[ChannelGroup]:
    return [group for group in build_dependency_graph(model).groups if any(m.tensor == tensor for m in group.members)]


def reason_of(model: onnx.ModelProto, tensor: str) -> str | None:
    (group,) = groups_with(model, tensor)
    return group.reason


def members(group: ChannelGroup) -> list[tuple[str, int, int]]:
    return sorted((m.tensor, m.offset, m.channels) for m in group.members)


def edits_of(model: onnx.ModelProto, node_name: str) -> list:
    position = [n.name for n in model.graph.node].index(node_name)
    return [e for e in build_dependency_graph(model).edits if e.node == position], position


def const(g: GraphBuilder, values, dtype=i64) -> str:
    return g.const(np.array(values, dtype))


# -- groups left alone, with the exact reason -------------------------------------------------------------------

def _pad_channel(g, x):
    return [g.conv(g.node("Pad", [x, const(g, [0, 1, 0, 0, 0, 0, 0, 0])]), C + 1, 4)]  # the front only


def _pad_axes(g, x):
    return [g.conv(g.node("Pad", [x, const(g, [1, 1, 1, 1]), "", const(g, [2, 3])]), C, 4)]


def _pad_runtime(g, x):
    shape = g.node("Shape", ["input"])  # not of x: Shape is not a rule, it would block x first
    return [g.node("Pad", [x, g.node("Concat", [shape, shape], axis=0)])]


def _resize_scales_channel(g, x):
    return [g.conv(g.node("Resize", [x, "", const(g, [1, 2, 2, 2], f32)], mode="nearest"), 2 * C, 4)]


def _resize_sizes_channel(g, x):
    return [g.conv(g.node("Resize", [x, "", "", const(g, [1, 8, 8, 8])], mode="nearest"), 8, 4)]


def _reduce_channel(g, x):
    return [g.node("ReduceMean", [x], axes=[1])]


def _reduce_batch_dropped(g, x):
    return [g.node("ReduceMean", [x], axes=[0], keepdims=0)]


def _reduce_all(g, x):
    return [g.node("ReduceMean", [x])]


def _slice_strided(g, x):
    return [g.conv(g.node("Slice", [x, const(g, [0]), const(g, [C]), const(g, [1]), const(g, [2])]), C // 2, 4)]


def _slice_runtime(g, x):
    ends = g.node("Shape", ["input"])
    return [g.node("ReduceSum", [g.node("Slice", [x, const(g, [0, 0, 0, 0]), ends])], keepdims=0)]


def _slice_opset9(g, x):
    return [g.node("Slice", [x], starts=[0], ends=[8], axes=[1])]


def _unsqueeze_batch(g, x):
    return [g.node("Unsqueeze", [x, const(g, [0])])]


def _reshape_spatial(g, x):
    return [g.node("Reshape", [x, const(g, [1, C, 16])])]


def _gemm_trans_a(g, x):
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    return [g.node("Gemm", [flat, const(g, np.ones((1, 3)), f32)], transA=1)]


def _matmul_4d(g, x):
    return [g.node("MatMul", [x, const(g, np.ones((4, 5)), f32)])]


def _add_lower_rank(g, x):
    other = g.node("Squeeze", [g.conv(g.node("Relu", [x]), C, C), const(g, [0])])
    return [g.node("Add", [x, other])]


def _bn_training(g, x):
    values = [const(g, np.full(C, v), f32) for v in (1.0, 0.0, 0.0, 1.0)]
    y, mean, var = g.node("BatchNormalization", [x, *values], outputs=3, training_mode=1)
    return [y, mean, var]


def _dropout_mask(g, x):
    y, mask = g.node("Dropout", [x], outputs=2)
    return [g.conv(y, C, 4), g.node("Cast", [mask], to=TensorProto.FLOAT)]


def _clip_runtime_min(g, x):
    low = g.node("ReduceMin", [g.node("Conv", [x, const(g, np.ones((1, C, 1, 1)), f32)])], keepdims=0)
    return [g.node("Clip", [x, low])]


def _conv_bias_runtime(g, x):
    bias = g.node("ReduceMean", [g.node("Relu", [x])], axes=[0, 2, 3], keepdims=0)
    return [g.node("Conv", [x, const(g, np.ones((C, C, 1, 1)), f32), bias])]


def _quantized_weight(g, x):
    w = g.node("DequantizeLinear", [const(g, np.ones((4, C, 1, 1)), np.int8), const(g, 0.5, f32)])
    return [g.node("Conv", [x, w])]


def _bn_runtime_scale(g, x):
    scale = g.node("ReduceMean", [g.conv(g.node("Relu", [x]), C, C)], axes=[0, 2, 3], keepdims=0)
    values = [scale] + [const(g, np.full(C, v), f32) for v in (0.0, 0.0, 1.0)]
    return [g.conv(g.node("BatchNormalization", [x, *values]), C, 4)]


def _grouped_conv(g, x):
    return [g.conv(x, C, C, kernel=3, group=4)]


def _quantized_behind_identity(g, x):
    w = g.node("DequantizeLinear", [const(g, np.ones((4, C, 1, 1)), np.int8), const(g, 0.5, f32)])
    return [g.node("Conv", [x, g.node("Identity", [w])])]


def _quantized_add_constant(g, x):
    c = g.node("DequantizeLinear", [const(g, np.ones((C, 1, 1)), np.int8), const(g, 0.5, f32)])
    return [g.conv(g.node("Add", [x, c]), C, 4)]


def _flatten_axis2(g, x):
    return [g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=2)]


def _flatten_spatial_h(g, x):
    return [g.node("Flatten", [x])]


def _matmul_3d_weight(g, x):
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    return [g.node("MatMul", [flat, const(g, np.ones((2, C, 3)), f32)])]


def _reduce_empty_axes(g, x):
    return [g.node("ReduceSum", [x, const(g, np.zeros(0), i64)])]


def _resize_runtime_sizes(g, x):
    sizes = g.node("Shape", ["input"])
    return [g.node("ReduceSum", [g.node("Resize", [x, "", "", sizes], mode="nearest")], keepdims=0)]


def _split_runtime(g, x):
    sizes = g.node("Slice", [g.node("Shape", ["input"]), const(g, [2]), const(g, [4])])
    parts = g.node("Split", [x, sizes], outputs=2, axis=1)
    return [g.node("Cast", [g.node("Size", [p])], to=TensorProto.FLOAT) for p in parts]  # outputs of known shape


def _squeeze_all(g, x):
    return [g.node("Squeeze", [g.node("Unsqueeze", [x, const(g, [4])])])]


def _squeeze_empty_axes(g, x):
    return [g.node("Squeeze", [g.node("Unsqueeze", [x, const(g, [4])]), const(g, np.zeros(0), i64)])]


BLOCKED: dict[str, tuple[Callable, int, str, str]] = {
    # case: (build, opset, node whose rule refuses (its output's name minus _out0 is computed), reason)
    "pad_channel": (_pad_channel, 13, "Pad", "pads the channel axis"),
    "pad_axes": (_pad_axes, 18, "Pad", "explicit axes input is not handled"),
    "pad_runtime": (_pad_runtime, 13, "Pad", "pads are computed at run time"),
    "resize_scales_channel": (_resize_scales_channel, 13, "Resize",
                              "scales are computed at run time or scale the channel axis"),
    "resize_sizes_channel": (_resize_sizes_channel, 13, "Resize", "resizes the channel axis"),
    "reduce_channel": (_reduce_channel, 13, "ReduceMean", "reduces or moves the channel axis"),
    "reduce_batch_dropped": (_reduce_batch_dropped, 13, "ReduceMean", "reduces or moves the channel axis"),
    "reduce_all": (_reduce_all, 13, "ReduceMean", "reduction axes are unknown or all axes"),
    "slice_strided": (_slice_strided, 13, "Slice", "a strided Slice of the channel axis is not handled"),
    "slice_runtime": (_slice_runtime, 13, "Slice", "input or output shape is unknown"),
    "slice_opset9": (_slice_opset9, 9, "Slice", "opset < 10 Slice (attribute bounds) is not handled"),
    "unsqueeze_batch": (_unsqueeze_batch, 13, "Unsqueeze",
                        "only squeezing/unsqueezing axes after the channel axis is handled"),
    "reshape_spatial": (_reshape_spatial, 13, "Reshape",
                        "only reshapes of an N x C x 1 x 1 tensor that keep C on axis 1 are handled"),
    "gemm_trans_a": (_gemm_trans_a, 13, "Gemm", "transA=1 is not handled"),
    "matmul_4d": (_matmul_4d, 13, "MatMul", "only 2-D inputs [N, C] are read as in-features"),
    "add_lower_rank": (_add_lower_rank, 13, "Add", "operand '{Squeeze}' [16, 4, 4] has a lower rank than the output"),
    "bn_training": (_bn_training, 14, "BatchNormalization", "training-mode outputs are used"),
    "dropout_mask": (_dropout_mask, 13, "Dropout", "second output (mask / indices) is used"),
    "clip_runtime_min": (_clip_runtime_min, 13, "Clip", "input '{ReduceMin}' is not a constant scalar"),
    "conv_bias_runtime": (_conv_bias_runtime, 13, "Conv", "bias '{ReduceMean}' is not a rewritable constant"),
    "quantized_weight": (_quantized_weight, 13, "Conv", "weight '{DequantizeLinear}' is quantized "
                         "(DequantizeLinear); removing channels would drop the quantization"),
    "quantized_behind_identity": (_quantized_behind_identity, 13, "Conv", "weight '{Identity}' is quantized "
                                  "(DequantizeLinear); removing channels would drop the quantization"),
    "quantized_add_constant": (_quantized_add_constant, 13, "Add", "'{DequantizeLinear}' is quantized "
                               "(DequantizeLinear); removing channels would drop the quantization"),
    "bn_runtime_scale": (_bn_runtime_scale, 13, "BatchNormalization", "'{ReduceMean}' is not a constant"),
    "grouped_conv": (_grouped_conv, 13, "Conv", "grouped conv (group=4, weight [16, 4, 3, 3]) cannot drop channels; "
                     "only depthwise convs with depth multiplier 1 pass channels through"),
    "flatten_axis2": (_flatten_axis2, 13, "Flatten", "only a channel-major flatten of a 1x1 tensor (after global "
                      "pooling) keeps channels on axis 1"),
    "flatten_spatial_h": (_flatten_spatial_h, 13, "Flatten", "only a channel-major flatten of a 1x1 tensor (after "
                          "global pooling) keeps channels on axis 1"),
    "matmul_3d_weight": (_matmul_3d_weight, 13, "MatMul", "weight is not 2-D"),
    "reduce_empty_axes": (_reduce_empty_axes, 13, "ReduceSum", "reduction axes are unknown or all axes"),
    "resize_runtime_sizes": (_resize_runtime_sizes, 13, "Resize", "sizes are not a rewritable constant"),
    "split_runtime": (_split_runtime, 13, "Split", "split sizes are computed at run time"),
    "squeeze_all": (_squeeze_all, 13, "Squeeze", "only squeezing/unsqueezing axes after the channel axis is handled"),
    "squeeze_empty_axes": (_squeeze_empty_axes, 13, "Squeeze",
                           "only squeezing/unsqueezing axes after the channel axis is handled"),
}


@pytest.mark.parametrize("case", list(BLOCKED))
def test_a_construct_the_rules_refuse_blocks_the_group_with_its_exact_reason(case: str) -> None:
    build, opset, op, reason = BLOCKED[case]
    model, x = chain(build, opset=opset)
    names = [n.name for n in model.graph.node]
    # the refusing node is the LAST node of that op type (the builder appends in order; the stem and PW convs
    # come first); tensors named in the reason are the outputs of the last node of the named op type
    refusing = [n for n in names if n.rstrip("0123456789") == op][-1]
    tensors = {name.rstrip("0123456789"): f"{name}_out0" for name in names}
    assert reason_of(model, x) == f"{op} '{refusing}': {reason.format(**tensors)}"


def test_a_graph_input_in_the_group_blocks_it() -> None:
    g = GraphBuilder(seed=6)
    x = g.conv("input", C, C)
    g.conv(g.node("Add", [x, "input"]), C, 4)
    model = g.model("input", [1, C, 4, 4], [g.nodes[-1].output[0]])
    assert reason_of(model, x) == "'input' is a graph input"


def _if_reading(tensor: str, depth: int) -> onnx.GraphProto:
    """A branch graph whose innermost node reads the outer ``tensor`` (``depth`` nested If nodes)."""
    out = f"branch{depth}"
    if depth == 0:
        return helper.make_graph([helper.make_node("Identity", [tensor], [out])], "inner", [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
    cond = helper.make_node("Constant", [], [f"cond{depth}"], value=helper.make_tensor("c", TensorProto.BOOL, [], [1]))
    branch = _if_reading(tensor, depth - 1)
    nested = helper.make_node("If", [f"cond{depth}"], [out], then_branch=branch, else_branch=branch)
    return helper.make_graph([cond, nested], f"level{depth}", [],
                             [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


@pytest.mark.parametrize("depth", [0, 1])
def test_a_tensor_read_inside_a_subgraph_blocks_its_group(depth: int) -> None:
    def build(g, x):
        g.nodes.append(helper.make_node("If", [const(g, True, bool)], ["if_out"], name="if",
                                        then_branch=_if_reading(x, depth), else_branch=_if_reading(x, depth)))
        return [g.conv(x, C, 4), "if_out"]

    model, x = chain(build)
    assert reason_of(model, x) == f"'{x}' is used inside a subgraph"


@pytest.mark.parametrize("domain, understood", [("com.example", False), ("ai.onnx", True), ("", True)])
def test_only_default_domain_operators_are_understood(domain: str, understood: bool) -> None:
    model, x = chain(lambda g, x: [g.conv(g.relu(x), C, 4)])
    model.graph.value_info.extend(onnx.shape_inference.infer_shapes(model).graph.value_info)  # shapes known
    relu = [n for n in model.graph.node if n.op_type == "Relu"][-1]
    relu.domain = domain
    if domain == "com.example":
        model.opset_import.append(helper.make_opsetid(domain, 1))
    expected = None if understood else f"Relu '{relu.name}': operator not understood by the PW pruner"
    assert reason_of(model, x) == expected


def test_a_channel_coupled_to_another_of_the_same_tensor_blocks_the_group() -> None:
    model, x = chain(lambda g, x: [g.conv(g.node("Concat", [x, x], axis=1), 2 * C, 4)])
    concat = next(n.output[0] for n in model.graph.node if n.op_type == "Concat")
    (group,) = groups_with(model, x)
    assert group.reason == f"a channel of '{concat}' is coupled to another channel of the same tensor"
    assert members(group) == sorted([(x, 0, C), (concat, 0, 2 * C)])


# -- groups that pass through: exact members, edits and removal ------------------------------------------------

def zero_rows(model: onnx.ModelProto, initializer: str, rows: list[int]) -> None:
    tensor = next(t for t in model.graph.initializer if t.name == initializer)
    value = onnx.numpy_helper.to_array(tensor).copy()
    value[rows] = 0
    tensor.CopyFrom(onnx.numpy_helper.from_array(value, initializer))


def _removal_is_exact(model: onnx.ModelProto, x: str, group_members: list[list[tuple[str, int, int]]],
                      removed: list[list[int]], sizes: list[int] | None = None,
                      plant: Callable[[onnx.ModelProto, list[int]], None] | None = None) -> onnx.ModelProto:
    """Zero PW rows chosen here, remove them with a hand-written plan, compare in ONNX Runtime."""
    rows = sorted({next(o for t, o, _ in group if t == x) + i for drop, group in zip(removed, group_members)
                   for i in drop})
    planted = zero_filters(model, node_of(x), rows)
    if plant is not None:
        plant(planted, rows)
    sizes = sizes or [min(m[2] for m in group) for group in group_members]
    pruned, _ = apply_pw_plan(planted, sized_plan(list(zip(group_members, sizes, removed))))
    assert_same_outputs(planted, pruned)
    np.testing.assert_array_equal(weight(pruned, node_of(x)), np.delete(weight(planted, node_of(x)), rows, axis=0))
    return pruned


def _out(model: onnx.ModelProto, op: str, which: int = -1) -> str:
    return [n.output[0] for n in model.graph.node if n.op_type == op][which]


PASS: dict[str, tuple[Callable, int, tuple[int, ...], list[str]]] = {
    # case: (build, opset, input shape, op types whose outputs join the PW output's group, in order)
    "pad": (lambda g, x: [g.conv(g.node("Pad", [x, const(g, [0, 0, 1, 1, 0, 0, 1, 1])]), C, 4)], 13, (1, 3, 4, 4),
            ["Pad"]),
    "resize_scales": (lambda g, x: [g.conv(g.node("Resize", [x, "", const(g, [1, 1, 2, 2], f32)], mode="nearest"),
                                           C, 4)], 13, (1, 3, 4, 4), ["Resize"]),
    "upsample": (lambda g, x: [g.conv(g.node("Upsample", [x, const(g, [1, 1, 2, 2], f32)]), C, 4)], 9,
                 (1, 3, 4, 4), ["Upsample"]),
    "reduce_spatial": (lambda g, x: [g.conv(g.node("ReduceMean", [x], axes=[2, 3]), C, 4)], 13, (1, 3, 4, 4),
                       ["ReduceMean"]),
    "reduce_batch_kept": (lambda g, x: [g.conv(g.node("ReduceMax", [x], axes=[0, -1]), C, 4)], 13, (1, 3, 4, 4),
                          ["ReduceMax"]),
    "reduce_axes_input": (lambda g, x: [g.conv(g.node("ReduceSum", [x, const(g, [-2, 3])]), C, 4)], 13,
                          (1, 3, 4, 4), ["ReduceSum"]),
    "slice_spatial": (lambda g, x: [g.conv(g.node("Slice", [x, const(g, [1]), const(g, [3]), const(g, [-1])]),
                                           C, 4)], 13, (1, 3, 4, 4), ["Slice"]),
    "unsqueeze_squeeze": (lambda g, x: [g.conv(g.node("Squeeze", [g.node("Unsqueeze", [x, const(g, [4])]),
                                                                  const(g, [-1])]), C, 4)], 13, (1, 3, 4, 4),
                          ["Unsqueeze", "Squeeze"]),
    "squeeze_attribute": (lambda g, x: [g.conv(g.node("Squeeze", [g.node("Unsqueeze", [x], axes=[4])], axes=[4]),
                                               C, 4)], 11, (1, 3, 4, 4), ["Unsqueeze", "Squeeze"]),
    "dropout_clip": (lambda g, x: [g.conv(g.node("Clip", [g.node("Dropout", [x]), const(g, 0.0, f32),
                                                          const(g, 6.0, f32)]), C, 4)], 13, (1, 3, 4, 4),
                     ["Dropout", "Clip"]),
    "split_spatial": (lambda g, x: [g.conv(o, C, 4) for o in g.node("Split", [x, const(g, [1, 3])], outputs=2,
                                                                     axis=2)], 13, (1, 3, 4, 4), ["Split"]),
    "split_batch_default_axis": (lambda g, x: [g.conv(g.node("Split", [x]), C, 4)], 13, (1, 3, 4, 4), ["Split"]),
    "concat_spatial": (lambda g, x: [g.conv(g.node("Concat", [x, g.relu(x)], axis=-2), C, 4)], 13, (1, 3, 4, 4),
                       ["Relu", "Concat"]),
    "flatten_default_axis": (lambda g, x: [g.node("Gemm", [g.node("Flatten", [g.node("GlobalAveragePool", [x])]),
                                                           const(g, np.ones((C, 3)), f32)])], 13, (1, 3, 4, 4),
                             ["GlobalAveragePool", "Flatten"]),
    "reshape_keeps_c": (lambda g, x: [g.conv(g.node("Reshape", [x, const(g, [0, -1, 1, 1])]), C, 4)], 13,
                        (1, 3, 1, 1), ["Reshape"]),
    "reshape_copies_c": (lambda g, x: [g.conv(g.node("Reshape", [x, const(g, [0, 0, 1, 1])]), C, 4)], 13,
                         (1, 3, 1, 1), ["Reshape"]),
    "pad_attribute": (lambda g, x: [g.conv(g.node("Pad", [x], pads=[0, 0, 1, 1, 0, 0, 1, 1]), C, 4)], 10,
                      (1, 3, 4, 4), ["Pad"]),
    "pad_constant_value": (lambda g, x: [g.conv(g.node("Pad", [x, const(g, [0, 0, 1, 1, 0, 0, 1, 1]),
                                                          const(g, 0.0, f32)]), C, 4)], 13, (1, 3, 4, 4), ["Pad"]),
    "dw_without_bias": (lambda g, x: [g.conv(g.conv(x, C, C, kernel=3, group=C, bias=False), C, 4)], 13,
                        (1, 3, 4, 4), ["Conv"]),
    "mul_by_a_one_channel_map": (lambda g, x: [g.conv(g.node("Mul", [x, g.conv("input", 3, 1)]), C, 4)], 13,
                                 (1, 3, 4, 4), ["Mul"]),
}


def group_tensors(model: onnx.ModelProto, x: str, ops: list[str]) -> list[str]:
    tensors = [x]
    if ops == ["Conv"]:  # a DW conv after x (the last Conv is the reader)
        return [x, _out(model, "Conv", -2)]
    for op in ops:
        outputs = [o for n in model.graph.node if n.op_type == op for o in n.output]
        tensors += outputs[-2:] if op == "Split" and len(outputs) > 1 and outputs[-1].endswith("_out1") else \
            outputs[-1:]
    return tensors


@pytest.mark.parametrize("case", list(PASS))
def test_a_construct_the_rules_understand_carries_the_group_and_removal_is_exact(case: str) -> None:
    build, opset, shape, ops = PASS[case]
    model, x = chain(build, shape=shape, opset=opset)
    (group,) = groups_with(model, x)
    assert group.reason is None
    expected = sorted((t, 0, C) for t in group_tensors(model, x, ops))
    assert members(group) == expected
    if case.startswith("reshape"):  # 0 and -1 need no rewrite
        assert edits_of(model, node_of(_out(model, "Reshape")))[0] == []
    _removal_is_exact(model, x, [expected], [[1, 5, 15]])


def test_a_channel_slice_with_a_negative_start_splits_the_group_at_the_hand_computed_offset() -> None:
    model, x = chain(lambda g, x: [g.conv(g.node("Slice", [x, const(g, [-12]), const(g, [C]), const(g, [1])]),
                                          12, 4)])
    y = _out(model, "Slice")
    found = sorted(members(group) for group in groups_with(model, x))
    assert found == [[(x, 0, C)], sorted([(x, 4, C), (y, 0, 12)])]
    edits, position = edits_of(model, node_of(y))
    assert edits == [RewriteSlice(position, 0)]
    pruned = _removal_is_exact(model, x, found, [[0, 3], [1, 11]], sizes=[4, 12])  # x rows 0, 3 | 5, 15
    index = GraphIndex(pruned.graph)
    node = next(n for n in pruned.graph.node if n.op_type == "Slice")
    assert index.constant(node.input[1]).tolist() == [2]  # 4 channels before the slice, two of them removed
    assert index.constant(node.input[2]).tolist() == [12]  # 2 + the 10 channels the slice keeps


def test_a_slice_with_implicit_axes_reads_its_channel_bounds_from_position_one() -> None:
    model, x = chain(lambda g, x: [g.conv(g.node("Slice", [x, const(g, [0, 2, 0, 0]), const(g, [1, 14, 4, 4])]),
                                          12, 4)])
    y = _out(model, "Slice")
    found = {tuple(members(group)): group.reason for group in groups_with(model, x)}
    # channels 0, 1, 14 and 15 of x touch only x: one group, not contiguous in x
    assert found == {((x, 0, C),): f"the channels of '{x}' are permuted or not contiguous",
                     tuple(sorted([(x, 2, C), (y, 0, 12)])): None}
    head = sorted([(x, 2, C), (y, 0, 12)])
    pruned = _removal_is_exact(model, x, [head], [[0, 11]], sizes=[12])  # x rows 2 and 13
    index = GraphIndex(pruned.graph)
    node = next(n for n in pruned.graph.node if n.op_type == "Slice")
    assert index.constant(node.input[1]).tolist() == [0, 2, 0, 0]
    assert index.constant(node.input[2]).tolist() == [1, 12, 4, 4]


def test_resize_sizes_and_reshape_targets_are_rewritten_to_the_new_channel_count() -> None:
    def build(g, x):
        resized = g.node("Resize", [x, "", "", const(g, [1, C, 8, 8])], mode="nearest")
        pooled = g.node("GlobalAveragePool", [resized])
        return [g.conv(g.node("Reshape", [pooled, const(g, [1, C, 1, 1])]), C, 4)]

    model, x = chain(build)
    resize, reshape = _out(model, "Resize"), _out(model, "Reshape")
    resize_edits, resize_position = edits_of(model, node_of(resize))
    reshape_edits, reshape_position = edits_of(model, node_of(reshape))
    assert resize_edits == [SetShapeEntry(resize_position, 3, 1, resize)]
    assert reshape_edits == [SetShapeEntry(reshape_position, 1, 1, reshape)]
    (group,) = groups_with(model, x)
    pruned = _removal_is_exact(model, x, [members(group)], [[2, 7, 8]])
    index = GraphIndex(pruned.graph)
    assert index.constant(index.node(node_of(resize)).input[3]).tolist() == [1, C - 3, 8, 8]
    assert index.constant(index.node(node_of(reshape)).input[1]).tolist() == [1, C - 3, 1, 1]


def test_per_channel_constants_are_sliced_on_their_own_channel_axis() -> None:
    def build(g, x):
        a = g.node("Add", [x, const(g, np.arange(C).reshape(C, 1, 1), f32)])
        s = g.node("Sub", [const(g, np.arange(C).reshape(1, C, 1, 1), f32), a])
        m = g.node("Mul", [s, const(g, [2.0], f32)])
        return [g.conv(m, C, 4)]

    model, x = chain(build)
    add, sub, mul = _out(model, "Add"), _out(model, "Sub"), _out(model, "Mul")
    assert edits_of(model, node_of(add))[0] == [SliceConstant(edits_of(model, node_of(add))[1], 1, 0, add)]
    assert edits_of(model, node_of(sub))[0] == [SliceConstant(edits_of(model, node_of(sub))[1], 0, 1, sub)]
    assert edits_of(model, node_of(mul))[0] == []
    (group,) = groups_with(model, x)
    assert members(group) == sorted([(x, 0, C), (add, 0, C), (sub, 0, C), (mul, 0, C)])
    # the removed channels are not zero after the Add/Sub constants: compare the kept channels only
    pruned, _ = apply_pw_plan(model, sized_plan([(members(group), C, [0, 9])]))
    index = GraphIndex(pruned.graph)
    np.testing.assert_array_equal(index.constant(index.node(node_of(add)).input[1]).reshape(-1),
                                  np.delete(np.arange(C), [0, 9]).astype(f32))
    np.testing.assert_array_equal(index.constant(index.node(node_of(sub)).input[0]).reshape(-1),
                                  np.delete(np.arange(C), [0, 9]).astype(f32))


def test_conv_bn_depthwise_and_gemm_edits_name_the_exact_inputs_and_axes() -> None:
    def build(g, x):
        bn = g.bn(x, C)
        dw = g.dw(bn, C)
        plain = g.conv(dw, C, 4, bias=False)
        flat = g.node("Flatten", [g.node("GlobalAveragePool", [dw])])
        head = g.node("Gemm", [flat, const(g, np.ones((3, C)), f32)], transB=1)
        return [plain, head]

    model, x = chain(build)
    names = [n.name for n in model.graph.node]
    pw, bn, dw = node_of(x), names[names.index(node_of(x)) + 1], names[names.index(node_of(x)) + 2]
    bn_out, dw_out = f"{bn}_out0", f"{dw}_out0"
    plain = names[names.index(dw) + 1]
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    position = {name: i for i, name in enumerate(names)}
    graph = build_dependency_graph(model)
    by_node = {}
    for e in graph.edits:
        by_node.setdefault(e.node, []).append(e)
    stem = f"{names[1]}_out0"  # the relu after the stem conv
    assert by_node[position[pw]] == [SliceConstant(position[pw], 1, 0, x), SliceConstant(position[pw], 1, 1, stem),
                                     SliceConstant(position[pw], 2, 0, x)]
    assert by_node[position[bn]] == [SliceConstant(position[bn], i, 0, bn_out) for i in range(1, 5)]
    assert by_node[position[dw]] == [SliceConstant(position[dw], 1, 0, dw_out), SliceConstant(position[dw], 2, 0, dw_out),
                                     SetGroupAttribute(position[dw], dw_out)]
    assert by_node[position[plain]] == [SliceConstant(position[plain], 1, 0, f"{plain}_out0"),
                                        SliceConstant(position[plain], 1, 1, dw_out)]
    flat = gemm.input[0]
    assert by_node[position[gemm.name]] == [SliceConstant(position[gemm.name], 1, 1, flat)]
    (group,) = groups_with(model, x)
    assert group.origins == [pw] and group.readers == sorted([plain, gemm.name], key=position.get)
    assert group.carriers == [bn, dw, names[position[dw] + 2], names[position[dw] + 3]]
    index = GraphIndex(model.graph)

    def plant(planted: onnx.ModelProto, rows: list[int]) -> None:  # BN and DW map the zero channels to zero
        zero_rows(planted, index.node(bn).input[2], rows)
        zero_rows(planted, index.node(bn).input[3], rows)
        zero_rows(planted, index.node(dw).input[1], rows)
        zero_rows(planted, index.node(dw).input[2], rows)

    _removal_is_exact(model, x, [members(group)], [[3, 4, 12]], plant=plant)


def test_split_sizes_from_an_attribute_and_rewrite_edit() -> None:
    model, x = chain(lambda g, x: [g.conv(o, n, 4) for o, n in zip(g.node("Split", [x], outputs=2, axis=1,
                                                                             split=[6, 10]), (6, 10))], opset=11)
    split = next(n for n in model.graph.node if n.op_type == "Split")
    edits, position = edits_of(model, split.name)
    assert edits == [RewriteSplit(position)]
    found = sorted(members(group) for group in groups_with(model, x))
    assert found == [sorted([(x, 0, C), (split.output[0], 0, 6)]), sorted([(x, 6, C), (split.output[1], 0, 10)])]


@pytest.mark.parametrize("producer", ["Constant", "Identity"])
def test_a_weight_behind_a_constant_node_or_identity_is_editable(producer: str) -> None:
    def build(g, x):
        value = np.ones((4, C, 1, 1), f32)
        if producer == "Constant":
            w = g.node("Constant", [], value=onnx.numpy_helper.from_array(value))
        else:
            w = g.node("Identity", [g.const(value)])
        return [g.node("Conv", [x, w])]

    model, x = chain(build)
    assert reason_of(model, x) is None


def test_a_channel_slice_from_zero_keeps_the_head_of_the_tensor() -> None:
    model, x = chain(lambda g, x: [g.conv(g.node("Slice", [x, const(g, [0]), const(g, [6]), const(g, [1])]), 6, 4)])
    y = _out(model, "Slice")
    found = {tuple(members(group)): group.reason for group in groups_with(model, x)}
    assert found == {tuple(sorted([(x, 0, C), (y, 0, 6)])): None, ((x, 6, C),): None}
    pruned = _removal_is_exact(model, x, [sorted([(x, 0, C), (y, 0, 6)])], [[1, 5]], sizes=[6])
    index = GraphIndex(pruned.graph)
    node = next(n for n in pruned.graph.node if n.op_type == "Slice")
    assert (index.constant(node.input[1]).tolist(), index.constant(node.input[2]).tolist()) == ([0], [4])


def test_removing_channels_before_a_channel_slice_only_moves_its_bounds() -> None:
    model, x = chain(lambda g, x: [g.conv(g.node("Slice", [x, const(g, [-12]), const(g, [C]), const(g, [1])]),
                                          12, 4)])
    pruned = _removal_is_exact(model, x, [[(x, 0, C)]], [[1, 2]], sizes=[4])  # outside the slice's channels
    index = GraphIndex(pruned.graph)
    node = next(n for n in pruned.graph.node if n.op_type == "Slice")
    assert (index.constant(node.input[1]).tolist(), index.constant(node.input[2]).tolist()) == ([2], [14])


def test_a_two_channel_per_channel_constant_is_sliced() -> None:
    g = GraphBuilder(seed=8)
    x = g.conv(g.relu(g.conv("input", 3, 8, kernel=3)), 8, 2)
    y = g.node("Add", [x, g.const(np.array([[[1.0]], [[2.0]]], f32))])
    model = g.model("input", [1, 3, 4, 4], [g.conv(y, 2, 4)])
    (group,) = groups_with(model, x)
    assert group.reason is None and members(group) == sorted([(x, 0, 2), (y, 0, 2)])
    edits, position = edits_of(model, node_of(y))
    assert edits == [SliceConstant(position, 1, 0, y)]


def test_convs_in_a_row_without_any_link_each_make_their_own_group() -> None:
    g = GraphBuilder(seed=9)
    a = g.conv("input", 3, 8, kernel=3)
    b = g.conv(a, 8, 4)
    c = g.conv(b, 4, 2)
    model = g.model("input", [1, 3, 4, 4], [c])
    groups = build_dependency_graph(model).groups
    assert [(group.id, members(group), group.origins, group.readers) for group in groups] == [
        ("g0", [(a, 0, 8)], [node_of(a)], [node_of(b)]), ("g1", [(b, 0, 4)], [node_of(b)], [node_of(c)]),
        ("g2", [(c, 0, 2)], [node_of(c)], [])]
    assert [group.reason for group in groups] == [None, None, f"'{c}' is a graph output"]


def test_forty_parallel_groups_are_never_merged() -> None:
    """Groups are told apart by a hash of the tensors they touch; 40 branches of two tensors each must stay 40
    groups (a weak hash, e.g. small weights, merges some of them)."""
    g = GraphBuilder(seed=10)
    stem = g.relu(g.conv("input", 3, 4, kernel=3))
    branches = [g.conv(stem, 4, 1, bias=False) for _ in range(40)]
    acts = [g.relu(b) for b in branches]
    model = g.model("input", [1, 3, 4, 4], [g.conv(g.node("Concat", acts, axis=1), 40, 2)])
    concat = _out(model, "Concat")
    found = sorted(members(group) for group in build_dependency_graph(model).groups
                   if any(m.tensor in branches for m in group.members))
    assert found == sorted(sorted([(b, 0, 1), (r, 0, 1), (concat, i, 40)])
                           for i, (b, r) in enumerate(zip(branches, acts)))
