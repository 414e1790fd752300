"""Classifier heads: GlobalAveragePool -> Flatten / Reshape -> Gemm / MatMul lose in-features with the channels."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from deprune_onnx.pw import build_dependency_graph, plan_pw_pruning
from support.pw_graphs import GraphBuilder, assert_exact_pruning, weight

C, CLASSES = 64, 10


def classifier(flatten: str, reader: str) -> tuple[onnx.ModelProto, str]:
    g = GraphBuilder(seed=11)
    x = g.relu(g.conv(g.relu(g.conv("input", 3, 16, kernel=3)), 16, C))
    pooled = g.node("GlobalAveragePool", [x])
    if flatten == "flatten":
        flat = g.node("Flatten", [pooled], axis=1)
    elif flatten == "reshape":  # an explicit C in the target must be rewritten
        flat = g.node("Reshape", [pooled, g.const(np.array([-1, C], np.int64))])
    else:
        flat = g.node("Squeeze", [pooled, g.const(np.array([2, 3], np.int64))])
    matrix = g.rng.standard_normal((C, CLASSES)).astype(np.float32)
    if reader == "gemm":
        out = g.node("Gemm", [flat, g.const(matrix.T.copy()), g.const(np.zeros(CLASSES, np.float32))], transB=1)
    else:
        out = g.node("MatMul", [flat, g.const(matrix)])
    model = g.model("input", [1, 3, 4, 4], [out])
    return model, next(n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul"))


@pytest.mark.parametrize("flatten", ["flatten", "reshape", "squeeze"])
@pytest.mark.parametrize("reader", ["gemm", "matmul"])
def test_classifier_in_features_are_removed(flatten, reader):
    model, head = classifier(flatten, reader)
    plan, pruned = assert_exact_pruning(model, ratio=0.5, align=16, scope="all")
    entry = next(g for g in plan.groups if head in g.readers)
    axis = 1 if reader == "gemm" else 0
    np.testing.assert_array_equal(weight(pruned, head),
                                  np.delete(weight(model, head), np.asarray(entry.removed), axis=axis))


def test_flatten_of_a_spatial_map_is_not_understood():
    """Channel-major flatten of H x W > 1 interleaves each channel's pixels: the group is left alone."""
    g = GraphBuilder(seed=12)
    x = g.relu(g.conv(g.relu(g.conv("input", 3, 16, kernel=3)), 16, C))
    flat = g.node("Flatten", [x], axis=1)
    out = g.node("Gemm", [flat, g.const(np.ones((C * 16, CLASSES), np.float32))])
    model = g.model("input", [1, 3, 4, 4], [out])
    (group,) = [grp for grp in build_dependency_graph(model).groups if grp.size == C]
    assert "Flatten" in group.reason and "1x1" in group.reason
    assert not [e for e in plan_pw_pruning(model, ratio=0.5, align=16, scope="all").groups if e.channels == C]
