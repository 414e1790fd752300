"""Residual chains: the projection PWs of consecutive blocks and their Adds form one group, pruned as one."""
from __future__ import annotations

import numpy as np
import onnx

from deprune_onnx.pw import apply_pw_plan, build_dependency_graph, plan_pw_pruning
from deprune_onnx.pw.importance import group_importance
from support.pw_graphs import GraphBuilder, assert_exact_pruning, weight

WIDTH, HIDDEN = 32, 64


def residual_chain(blocks: int = 3, with_bn: bool = True) -> onnx.ModelProto:
    """stem -> [expand -> relu -> DW -> relu -> project (+BN)] + skip, repeated; the chain ends in a PW head."""
    g = GraphBuilder()
    x = g.relu(g.conv("input", 3, WIDTH, kernel=3))
    for block in range(blocks):
        h = g.relu(g.dw(g.relu(g.conv(x, WIDTH, HIDDEN)), HIDDEN))
        projected = g.conv(h, HIDDEN, WIDTH)
        if with_bn and block == 1:
            projected = g.bn(projected, WIDTH)
        x = g.node("Add", [x, projected])
    return g.model("input", [1, 3, 8, 8], [g.conv(x, WIDTH, 16)])


def test_chain_is_one_group_with_every_projection_and_add():
    model = residual_chain()
    graph = build_dependency_graph(model)
    chain = [g for g in graph.groups if len(g.origins) > 1]
    assert len(chain) == 1
    group = chain[0]
    assert group.reason is None and group.size == WIDTH
    assert len(group.origins) == 4  # the stem and three projections
    adds = [n.output[0] for n in model.graph.node if n.op_type == "Add"]
    assert set(adds) <= {m.tensor for m in group.members}
    assert all(m.offset == 0 for m in group.members)


def test_pruning_planted_zero_channels_is_exact_and_same_indices_everywhere():
    model = residual_chain()
    plan, pruned = assert_exact_pruning(model, ratio=0.5, align=8, scope="project")
    (entry,) = [g for g in plan.groups if len(g.producers) > 1]
    assert entry.kept == 16 and entry.aligned
    removed = np.asarray(entry.removed)
    for producer in entry.producers:
        assert weight(pruned, producer).shape[0] == entry.kept
    for reader in entry.readers:  # every expansion PW and the head lose the same input channels
        np.testing.assert_array_equal(weight(pruned, reader), np.delete(weight(model, reader), removed, axis=1))


def test_batchnorm_parameters_are_sliced_and_scale_folded_into_importance():
    model = residual_chain()
    graph = build_dependency_graph(model)
    (group,) = [g for g in graph.groups if len(g.origins) > 1]
    scores, rule = group_importance(model, graph, group, set())
    assert rule == "l2*bn" and scores.shape == (WIDTH,)
    plan = plan_pw_pruning(model, ratio=0.25, align=8, scope="project")
    pruned, _ = apply_pw_plan(model, plan)
    bn = next(n for n in pruned.graph.node if n.op_type == "BatchNormalization")
    entry = next(g for g in plan.groups if len(g.producers) > 1)
    assert all(weight(pruned, bn.name, i).shape == (entry.kept,) for i in range(1, 5))


def test_bn_scale_changes_the_ranking():
    """A filter with a big norm behind a tiny BN scale is less important than its raw norm says."""
    model = residual_chain()
    graph = build_dependency_graph(model)
    (group,) = [g for g in graph.groups if len(g.origins) > 1]
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    gamma = next(t for t in model.graph.initializer if t.name == bn.input[1])
    value = onnx.numpy_helper.to_array(gamma).copy()
    before, _ = group_importance(model, graph, group, set())
    value[5] = 0.0
    gamma.CopyFrom(onnx.numpy_helper.from_array(value, gamma.name))
    after, _ = group_importance(model, graph, group, set())
    assert after[5] < before[5]
    np.testing.assert_allclose(np.delete(after, 5), np.delete(before, 5))
