"""Split and Slice on the channel axis: each output is a group at its offset; sizes and bounds are rewritten."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from deprune_onnx.onnx_io.graph import GraphIndex
from support.pw_graphs import GraphBuilder, assert_exact_pruning, run, random_feeds

C = 32


def split_model(opset: int) -> onnx.ModelProto:
    g = GraphBuilder(seed=7)
    x = g.conv(g.relu(g.conv("input", 3, 8, kernel=3)), 8, C)
    if opset >= 13:
        first, second = g.node("Split", [x, g.const(np.array([8, 24], np.int64))], outputs=2, axis=1)
    else:
        first, second = g.node("Split", [x], outputs=2, axis=1, split=[8, 24])
    out = g.node("Add", [g.conv(g.relu(first), 8, 4), g.conv(second, 24, 4)])
    return g.model("input", [1, 3, 6, 6], [out], opset=opset)


def slice_model() -> onnx.ModelProto:
    g = GraphBuilder(seed=8)
    x = g.relu(g.conv(g.relu(g.conv("input", 3, 8, kernel=3)), 8, C))
    starts, ends, axes = (g.const(np.array([v], np.int64)) for v in (4, 20, 1))
    middle = g.node("Slice", [x, starts, ends, axes])
    tail = g.node("Slice", [x, g.const(np.array([-8], np.int64)), g.const(np.array([2**62], np.int64)), axes])
    out = g.node("Add", [g.conv(middle, 16, 4), g.conv(tail, 8, 4)])
    return g.model("input", [1, 3, 6, 6], [out])


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_sizes_follow_the_kept_channels(opset):
    model = split_model(opset)
    plan, pruned = assert_exact_pruning(model, ratio=0.5, align=4, scope="all")
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    if opset >= 13:
        sizes = GraphIndex(pruned.graph).constant(split.input[1])
    else:
        sizes = np.asarray(onnx.helper.get_attribute_value(next(a for a in split.attribute if a.name == "split")))
    kept = {tuple(sorted(m["offset"] for m in g.members)): g.kept for g in plan.groups}
    assert sizes.tolist() == [kept.get((0, 0), 8), kept.get((0, 8), 24)]


def test_slice_bounds_follow_the_kept_channels():
    model = slice_model()
    plan, pruned = assert_exact_pruning(model, ratio=0.5, align=4, scope="all")
    # channels outside both slices are dead: they form their own group, which may be removed entirely
    assert run(pruned, random_feeds(model))[0].shape == (1, 4, 6, 6)
    slices = [n for n in pruned.graph.node if n.op_type == "Slice"]
    index = GraphIndex(pruned.graph)
    widths = [int(index.constant(n.input[2])[0] - index.constant(n.input[1])[0]) for n in slices]
    readers = [n for n in pruned.graph.node if n.op_type == "Conv" and n.input[0] in {s.output[0] for s in slices}]
    assert widths == [index.constant(r.input[1]).shape[1] for r in readers]
