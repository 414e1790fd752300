"""Concat with 3+ inputs and Split with 3+ outputs: channel offsets written out by hand, and exact removal of
channels whose zeros the TEST plants (not the dependency graph under test).

A wrong offset for the third Concat input passed every 2-input test before (issue #17) and crashed real pruned
graphs in ONNX Runtime. Here the expected groups (members and offsets) are literals, the plan that removes
channels is written by hand from those literals, the zeroed filters are chosen by the test, and the reader's
expected weight is ``np.delete`` of the original at hand-computed positions.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.pw import PWPlan, apply_pw_plan, build_dependency_graph
from support.pw_graphs import GraphBuilder, random_feeds, run, sized_plan, weight

CONCAT_SIZES = [4, 8, 12, 8]   # offsets 0, 4, 12, 24 in the 32-channel Concat output
SPLIT_SIZES = [4, 12, 8]       # offsets 0, 4, 16 in the 24-channel Split input


def concat_model(inputs: int, bias: bool) -> tuple[onnx.ModelProto, dict]:
    g = GraphBuilder(seed=11 + inputs)
    stem = g.relu(g.conv("input", 3, 8, kernel=3, bias=bias))
    branches = [g.conv(stem, 8, size, bias=bias) for size in CONCAT_SIZES[:inputs]]
    joined = g.node("Concat", [g.relu(b) if i % 2 else b for i, b in enumerate(branches)], axis=1)
    act = g.relu(joined)
    reader = g.conv(act, sum(CONCAT_SIZES[:inputs]), 5, bias=bias)
    model = g.model("input", [1, 3, 6, 6], [reader])
    names = {n.output[0]: n.name for n in model.graph.node}
    relu_of = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "Relu"}
    return model, {"branches": branches, "branch_nodes": [names[b] for b in branches], "relu_of": relu_of,
                   "concat": joined, "act": act, "reader": names[reader]}


def split_model(outputs: int, bias: bool) -> tuple[onnx.ModelProto, dict]:
    sizes = SPLIT_SIZES[:outputs]
    g = GraphBuilder(seed=21 + outputs)
    x = g.conv(g.relu(g.conv("input", 3, 8, kernel=3, bias=bias)), 8, sum(sizes), bias=bias)
    parts = g.node("Split", [x, g.const(np.array(sizes, np.int64))], outputs=outputs, axis=1)
    readers = [g.conv(part, size, 4, bias=bias) for part, size in zip(parts, sizes)]
    out = readers[0]
    for other in readers[1:]:
        out = g.node("Add", [out, other])
    model = g.model("input", [1, 3, 6, 6], [out])
    names = {n.output[0]: n.name for n in model.graph.node}
    return model, {"x": x, "x_node": names[x], "parts": parts, "readers": [names[r] for r in readers]}


def concat_members(info: dict, inputs: int) -> list[list[tuple[str, int, int]]]:
    """Hand-written expected members of each Concat input's group: (tensor, offset, channels)."""
    total = sum(CONCAT_SIZES[:inputs])
    offsets = [0, 4, 12, 24][:inputs]
    groups = []
    for i, (branch, size, offset) in enumerate(zip(info["branches"], CONCAT_SIZES, offsets)):
        members = [(branch, 0, size), (info["concat"], offset, total), (info["act"], offset, total)]
        if i % 2:
            members.append((info["relu_of"][branch], 0, size))
        groups.append(sorted(members))
    return groups


def hand_plan(groups: list[list[tuple[str, int, int]]], removed: list[list[int]]) -> PWPlan:
    """``sized_plan`` with each group's size the smallest member (the producer's own tensor)."""
    return sized_plan([(members, min(m[2] for m in members), drop) for members, drop in zip(groups, removed)])


def zero_filters(model: onnx.ModelProto, node_name: str, rows: list[int]) -> onnx.ModelProto:
    """A copy where output channels ``rows`` of Conv ``node_name`` are exactly 0 (weight rows and bias)."""
    planted = onnx.ModelProto()
    planted.CopyFrom(model)
    node = GraphIndex(planted.graph).node(node_name)
    inits = {t.name: t for t in planted.graph.initializer}
    for name in node.input[1:3]:
        value = numpy_helper.to_array(inits[name]).copy()
        value[rows] = 0
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return planted


def assert_same_outputs(expected_model: onnx.ModelProto, got_model: onnx.ModelProto) -> None:
    onnx.checker.check_model(got_model, full_check=True)
    feeds = random_feeds(expected_model)
    for expected, got in zip(run(expected_model, feeds), run(got_model, feeds)):
        assert expected.shape == got.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("inputs", [3, 4])
def test_concat_groups_sit_at_hand_computed_offsets(inputs: int) -> None:
    model, info = concat_model(inputs, bias=True)
    graph = build_dependency_graph(model)
    found = {}
    for group in graph.groups:
        if len(group.origins) == 1 and group.origins[0] in info["branch_nodes"]:
            assert group.reason is None
            found[info["branch_nodes"].index(group.origins[0])] = sorted(
                (m.tensor, m.offset, m.channels) for m in group.members)
    assert found == dict(enumerate(concat_members(info, inputs)))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("inputs", [3, 4])
def test_removing_test_planted_zero_channels_through_a_concat_is_exact(inputs: int, bias: bool) -> None:
    model, info = concat_model(inputs, bias=bias)
    removed = [[1], [0, 5], [3, 7, 11], [2, 6]][:inputs]
    planted = model
    for node, rows in zip(info["branch_nodes"], removed):
        planted = zero_filters(planted, node, rows)
    pruned, _ = apply_pw_plan(planted, hand_plan(concat_members(info, inputs), removed))
    assert_same_outputs(planted, pruned)
    # the reader loses the concatenated positions offset_i + removed_i, written out by hand
    positions = [1, 4, 9, 15, 19, 23, 26, 30][: {3: 6, 4: 8}[inputs]]
    np.testing.assert_array_equal(weight(pruned, info["reader"]),
                                  np.delete(weight(planted, info["reader"]), positions, axis=1))
    for node, rows, size in zip(info["branch_nodes"], removed, CONCAT_SIZES):
        np.testing.assert_array_equal(weight(pruned, node), np.delete(weight(planted, node), rows, axis=0))
        if bias:
            np.testing.assert_array_equal(weight(pruned, node, 2), np.delete(weight(planted, node, 2), rows))


def test_split_groups_sit_at_hand_computed_offsets() -> None:
    model, info = split_model(3, bias=True)
    graph = build_dependency_graph(model)
    found = sorted(sorted((m.tensor, m.offset, m.channels) for m in group.members)
                   for group in graph.groups if group.origins == [info["x_node"]])
    x, parts = info["x"], info["parts"]
    assert found == sorted([sorted([(x, 0, 24), (parts[0], 0, 4)]), sorted([(x, 4, 24), (parts[1], 0, 12)]),
                            sorted([(x, 16, 24), (parts[2], 0, 8)])])


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_removing_test_planted_zero_channels_before_a_three_way_split_is_exact(bias: bool) -> None:
    model, info = split_model(3, bias=bias)
    x, parts = info["x"], info["parts"]
    planted = zero_filters(model, info["x_node"], [2, 5, 9, 17, 23])  # split parts: [2], [1, 5], [1, 7]
    plan = hand_plan([sorted([(x, 0, 24), (parts[0], 0, 4)]), sorted([(x, 4, 24), (parts[1], 0, 12)]),
                      sorted([(x, 16, 24), (parts[2], 0, 8)])], [[2], [1, 5], [1, 7]])
    pruned, _ = apply_pw_plan(planted, plan)
    assert_same_outputs(planted, pruned)
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    assert GraphIndex(pruned.graph).constant(split.input[1]).tolist() == [3, 10, 6]
    np.testing.assert_array_equal(weight(pruned, info["x_node"]),
                                  np.delete(weight(planted, info["x_node"]), [2, 5, 9, 17, 23], axis=0))
    for reader, cols in zip(info["readers"], [[2], [1, 5], [1, 7]]):
        np.testing.assert_array_equal(weight(pruned, reader), np.delete(weight(planted, reader), cols, axis=1))
