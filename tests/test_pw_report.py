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


def test_partial_subgemm_warning_names_the_layer_and_the_fix():
    from deprune_onnx.report.build import partial_subgemm_warnings

    pw = {"dw_layers": [{"layer": "a", "channels_before": 64, "channels_after": 64},
                        {"layer": "b", "channels_before": 96, "channels_after": 72},
                        {"layer": "c", "channels_before": 40, "channels_after": 24},   # partial before already
                        {"layer": "d", "channels_before": 128, "channels_after": 104}]}
    (line,) = partial_subgemm_warnings(pw, 32)
    assert line.startswith("PW removal left 2 DW layer(s)") and "b: 96 -> 72" in line and "--pw-align 32" in line
    assert partial_subgemm_warnings({"dw_layers": pw["dw_layers"][:1]}, 32) == []
    assert partial_subgemm_warnings(None) == []


def test_prune_warns_when_pw_align_splits_sub_gemms(tmp_path):
    from support.cli_testing import run_cli
    from support.samples import sample_model

    result = run_cli("prune", sample_model("mobilenet_v3_small"), tmp_path / "o.onnx", "--dw-ratio", "0.5",
                     "--pw-ratio", "0.3", "--pw-scope", "all", "--pw-align", "8", "--format", "dense")
    assert result.exit_code == 0, result.output
    assert "warning: PW removal left" in result.output and "--pw-align 32 keeps them whole" in result.output
    aligned = run_cli("prune", sample_model("mobilenet_v3_small"), tmp_path / "p.onnx", "--dw-ratio", "0.5",
                      "--pw-ratio", "0.3", "--pw-scope", "all", "--format", "dense")
    assert aligned.exit_code == 0 and "warning: PW removal left" not in aligned.output


def test_summary_counts_groups_outside_the_scope_apart_from_blocked_ones():
    from deprune_onnx.report.build import _pw_lines

    pw = {"scope": "project", "align": 32, "target_ratio": 0.3,
          "pw_channels": {"before": 64, "after": 48, "ratio": 0.25}, "params": {"before": 10, "after": 8},
          "macs": {"before": 100, "after": 80},
          "groups": [{"reason": "out of scope 'project': no projection PW produces these channels"},
                     {"reason": "out of scope 'project': no projection PW produces these channels"},
                     {"reason": "'x' is a graph input"}, {"reason": None}]}
    (line,) = _pw_lines({"pw": pw})
    assert line.endswith("; 1 group(s) left unpruned (reasons in the report), 2 outside --pw-scope project")
