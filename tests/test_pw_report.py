"""Params/MACs counting on a model small enough to count by hand, and the report rows of a plan."""
from __future__ import annotations

import numpy as np

from deprune_onnx.pw import (apply_pw_plan, count_macs, count_params, plan_pw_pruning, pw_report,
                             summarize_model)
from support.pw_graphs import GraphBuilder


def test_params_and_macs_by_hand():
    g = GraphBuilder()
    x = g.conv("input", 3, 8, kernel=3)  # 8*3*9 + 8 params; 8*3*9 * 4*4 MACs
    y = g.conv(x, 8, 16)  # 16*8 + 16 params; 16*8 * 4*4 MACs
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [y])], axis=1)
    out = g.node("Gemm", [flat, g.const(np.ones((16, 5), np.float32))])  # 80 params, 80 MACs
    model = g.model("input", [1, 3, 4, 4], [out])
    assert count_params(model) == 8 * 27 + 8 + 16 * 8 + 16 + 80
    assert count_macs(model) == 8 * 27 * 16 + 16 * 8 * 16 + 80


def test_report_rows_for_pruned_and_skipped_groups():
    g = GraphBuilder(seed=2)
    x = g.relu(g.conv("input", 3, 16, kernel=3))
    hidden = g.relu(g.dw(g.relu(g.conv(x, 16, 64)), 64))
    projected = g.conv(hidden, 64, 32)
    model = g.model("input", [1, 3, 4, 4], [g.conv(g.relu(projected), 32, 4)])
    plan = plan_pw_pruning(model, ratio=0.5, align=8, scope="project")
    pruned, record = apply_pw_plan(model, plan)
    report = pw_report(plan, summarize_model(model), pruned)
    assert record == report  # the removal's record is this report
    rows = {row["group"]: row for row in report["groups"]}
    pruned = [row for row in rows.values() if row["pruned"]]
    assert len(pruned) == 1 and pruned[0]["channels_before"] == 32 and pruned[0]["channels_after"] == 16
    assert pruned[0]["ratio"] == 0.5 and pruned[0]["aligned"] and pruned[0]["reason"] is None
    assert all("out of scope" in row["reason"] for row in rows.values() if not row["pruned"])
    layers = {row["layer"]: row for row in report["layers"]}
    pairs = sorted((r["out_channels_before"], r["out_channels_after"], r["in_channels_after"])
                   for r in layers.values())
    assert pairs == [(4, 4, 16), (32, 16, 64), (64, 64, 16)]  # head reads 16, projection keeps 16 of 32
    assert report["pw_channels"] == {"before": 32, "after": 16, "ratio": 0.5}
