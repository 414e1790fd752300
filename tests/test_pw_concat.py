"""Concat on the channel axis: each input is its own group, placed at its offset in the concatenated tensor."""
from __future__ import annotations

import numpy as np
import onnx

from deprune_onnx.pw import build_dependency_graph
from support.pw_graphs import GraphBuilder, assert_exact_pruning, weight

A, B = 16, 24


def concat_model() -> tuple[onnx.ModelProto, dict[str, str]]:
    g = GraphBuilder(seed=5)
    x = g.relu(g.conv("input", 3, 8, kernel=3))
    left = g.conv(x, 8, A)
    right = g.conv(x, 8, B)
    joined = g.relu(g.node("Concat", [g.relu(left), right], axis=1))
    reader = g.conv(joined, A + B, 8)
    model = g.model("input", [1, 3, 6, 6], [reader])
    names = {n.output[0]: n.name for n in model.graph.node}
    return model, {"left": names[left], "right": names[right], "reader": names[reader]}


def test_each_concat_input_is_a_group_at_its_offset():
    model, names = concat_model()
    graph = build_dependency_graph(model)
    concat_out = next(n.output[0] for n in model.graph.node if n.op_type == "Concat")
    offsets = {}
    for group in graph.groups:
        if group.origins in ([names["left"]], [names["right"]]):
            assert group.reason is None
            offsets[group.origins[0]] = next(m.offset for m in group.members if m.tensor == concat_out)
    assert offsets == {names["left"]: 0, names["right"]: A}


def test_pruning_both_concat_inputs_is_exact_and_slices_the_reader_at_the_offsets():
    model, names = concat_model()
    plan, pruned = assert_exact_pruning(model, ratio=0.5, align=4, scope="all")
    left = next(g for g in plan.groups if g.producers == [names["left"]])
    right = next(g for g in plan.groups if g.producers == [names["right"]])
    removed = np.concatenate([np.asarray(left.removed), A + np.asarray(right.removed)])
    np.testing.assert_array_equal(weight(pruned, names["reader"]),
                                  np.delete(weight(model, names["reader"]), removed, axis=1))
    assert weight(pruned, names["left"]).shape[0] == left.kept
    assert weight(pruned, names["right"]).shape[0] == right.kept
