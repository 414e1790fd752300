"""Anything the dependency rules do not understand leaves its whole group untouched, with the reason."""
from __future__ import annotations

import onnx
import pytest

from deprune_onnx.pw import apply_pw_plan, build_dependency_graph, plan_pw_pruning
from support.pw_graphs import GraphBuilder, random_feeds, run, weight

C = 32


def model_with(consumer: str) -> tuple[onnx.ModelProto, str]:
    """stem -> PW (C channels) -> relu -> <consumer>; a second, ordinary group keeps the plan non-empty."""
    g = GraphBuilder(seed=13)
    stem = g.relu(g.conv("input", 3, 16, kernel=3))
    pw = g.conv(stem, 16, C)
    x = g.relu(pw)
    outputs = []
    if consumer == "transpose":
        outputs.append(g.node("Transpose", [x], perm=[0, 2, 3, 1]))
    elif consumer == "graph_output":
        outputs.append(x)
    elif consumer == "grouped_conv":
        outputs.append(g.conv(x, C, C, kernel=3, group=4))
    elif consumer == "dw_multiplier_2":
        outputs.append(g.conv(x, C, 2 * C, kernel=3, group=C))
    elif consumer == "channel_softmax":
        outputs.append(g.node("Softmax", [x], axis=1))
    other = g.conv(g.relu(g.conv(stem, 16, C)), C, 8)
    model = g.model("input", [1, 3, 6, 6], outputs + [other])
    return model, next(n.name for n in model.graph.node if n.output[0] == pw)


@pytest.mark.parametrize("consumer, words", [
    ("transpose", "not understood"), ("graph_output", "graph output"), ("grouped_conv", "grouped conv"),
    ("dw_multiplier_2", "depth multiplier 1"), ("channel_softmax", "not understood")])
def test_group_with_unsupported_consumer_is_left_untouched(consumer, words):
    model, pw = model_with(consumer)
    (group,) = [g for g in build_dependency_graph(model).groups if g.origins == [pw]]
    assert group.reason is not None and words in group.reason
    plan = plan_pw_pruning(model, ratio=0.5, align=8, scope="all")
    skipped = next(e for e in plan.skipped if e.producers == [pw])
    assert skipped.reason == group.reason and skipped.removed == []
    assert any(e.removed for e in plan.groups)  # the other groups are still pruned
    pruned, _ = apply_pw_plan(model, plan)
    onnx.checker.check_model(pruned, full_check=True)
    assert weight(pruned, pw).shape[0] == C  # its input channels may shrink with the stem group, not its filters
    feeds = random_feeds(model)
    assert [o.shape for o in run(pruned, feeds)] == [o.shape for o in run(model, feeds)]
