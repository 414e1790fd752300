"""Squeeze-excitation: the SE reduce conv reads the gated channels, the SE expand conv produces the gate."""
from __future__ import annotations

import numpy as np
import onnx

from deprune_onnx.pw import build_dependency_graph, plan_pw_pruning
from support.pw_graphs import GraphBuilder, assert_exact_pruning, weight

C_IN, HIDDEN, SQUEEZE, C_OUT = 16, 48, 8, 24


def se_block(per_channel_scale: bool = False) -> tuple[onnx.ModelProto, dict[str, str]]:
    """expand -> hard-swish -> DW -> hard-swish -> SE (GAP, reduce, relu, expand, HardSigmoid, Mul) -> project."""
    g = GraphBuilder(seed=3)
    x = g.relu(g.conv("input", 3, C_IN, kernel=3))
    expanded = g.conv(x, C_IN, HIDDEN)
    h = g.hardswish(g.dw(g.hardswish(expanded), HIDDEN))
    pooled = g.node("GlobalAveragePool", [h])
    reduce_out = g.conv(pooled, HIDDEN, SQUEEZE)
    gate_conv = g.conv(g.relu(reduce_out), SQUEEZE, HIDDEN)
    gated = g.node("Mul", [h, g.node("HardSigmoid", [gate_conv], alpha=0.2, beta=0.5)])
    if per_channel_scale:  # a broadcast constant [1, C, 1, 1] must lose the same channels
        scale = g.rng.uniform(0.5, 1.5, (1, HIDDEN, 1, 1)).astype(np.float32)
        gated = g.node("Mul", [gated, g.const(scale)])
    projected = g.conv(gated, HIDDEN, C_OUT)
    model = g.model("input", [1, 3, 8, 8], [g.conv(g.relu(projected), C_OUT, 8)])
    names = {n.output[0]: n.name for n in model.graph.node}
    return model, {"expand": names[expanded], "reduce": names[reduce_out], "gate": names[gate_conv],
                   "project": names[projected]}


def test_gated_group_couples_expansion_dw_se_expand_and_se_reduce():
    model, names = se_block()
    graph = build_dependency_graph(model)
    (group,) = [g for g in graph.groups if names["expand"] in g.origins]
    assert group.reason is None and group.size == HIDDEN
    assert set(group.origins) == {names["expand"], names["gate"]}
    assert set(group.readers) == {names["reduce"], names["project"]}


def test_scope_project_leaves_the_expansion_group_and_prunes_the_projection():
    model, names = se_block()
    plan = plan_pw_pruning(model, ratio=0.5, align=8, scope="project")
    assert [g.producers for g in plan.groups] == [[names["project"]]]
    skipped = next(g for g in plan.skipped if names["expand"] in g.producers)
    assert "out of scope" in skipped.reason


def test_scope_all_prunes_through_dw_and_se_exactly():
    model, names = se_block()
    plan, pruned = assert_exact_pruning(model, ratio=0.5, align=8, scope="all")
    entry = next(g for g in plan.groups if names["expand"] in g.producers)
    assert entry.kept == HIDDEN // 2
    removed = np.asarray(entry.removed)
    np.testing.assert_array_equal(weight(pruned, names["reduce"]),
                                  np.delete(weight(model, names["reduce"]), removed, axis=1))
    assert weight(pruned, names["gate"]).shape[0] == entry.kept
    dw = next(n for n in pruned.graph.node if n.op_type == "Conv" and
              onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "group")) > 1)
    assert onnx.helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == entry.kept
    assert weight(pruned, dw.name).shape == (entry.kept, 1, 3, 3)


def test_se_expand_filters_do_not_drive_the_ranking():
    """The gate says how much passes, not what the channel holds: importance comes from the expansion PW."""
    model, names = se_block()
    plan = plan_pw_pruning(model, ratio=0.5, align=8, scope="all")
    entry = next(g for g in plan.groups if names["expand"] in g.producers)
    norms = np.linalg.norm(weight(model, names["expand"]).reshape(HIDDEN, -1), axis=1)
    assert entry.removed == sorted(np.argsort(norms, kind="stable")[:HIDDEN // 2].tolist())


def test_per_channel_broadcast_constant_is_sliced():
    model, names = se_block(per_channel_scale=True)
    plan, pruned = assert_exact_pruning(model, ratio=0.5, align=8, scope="all")
    entry = next(g for g in plan.groups if names["expand"] in g.producers)
    scale = next(n for n in pruned.graph.node if n.op_type == "Mul" and n.input[1] in
                 {t.name for t in pruned.graph.initializer})
    assert weight(pruned, scale.name).shape == (1, entry.kept, 1, 1)
