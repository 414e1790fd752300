"""The HTML report (issue #12.9): a PW section (groups, channels before/after, why a group stayed whole), DW
channels and params before and after PW removal, and chart legends that keep full names and never reuse a
colour."""
from __future__ import annotations

import html
import json
import struct
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from support.cli_testing import run_cli
from support.dsconv_graphs import BlockSpec, dsconv_network


@pytest.fixture(scope="module")
def pw_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("report")
    # No expansion PWs: each DW conv reads the previous projection, so PW removal shrinks DW layers too.
    model = dsconv_network([BlockSpec(16, 48, expand=1), BlockSpec(48, 48, expand=1), BlockSpec(48, 20, expand=1),
                            BlockSpec(20, 24, expand=1)], size=8, seed=5)
    onnx.save(model, folder / "m.onnx")
    result = run_cli("prune", folder / "m.onnx", folder / "p.onnx", "--dw-ratio", "0.5", "--pw-ratio", "0.5",
                     "--pw-align", "8", "-q")
    assert result.exit_code == 0, result.output
    result = run_cli("report", folder / "p.report.json", "-o", folder / "r.html", "--no-plot")
    assert result.exit_code == 0, result.output
    return folder, json.loads((folder / "p.report.json").read_text())


def test_pw_section_lists_every_group_with_its_channels_or_reason(pw_report: tuple[Path, dict]) -> None:
    folder, report = pw_report
    page = (folder / "r.html").read_text()
    section = page[page.index("<h2>PW channel removal</h2>"):]
    groups = report["pw"]["groups"]
    assert any(g["pruned"] for g in groups) and any(not g["pruned"] for g in groups)
    for group in groups:
        row = section[section.index(f"<td class='name'>{group['group']}</td>"):]
        row = row[:row.index("</tr>")]
        if group["pruned"]:
            assert f"{group['channels_before']} &rarr; {group['channels_after']}" in row and ">pruned<" in row
        else:
            assert f"whole: {html.escape(group['reason'])}" in row
    params = report["pw"]["params"]
    assert f"params {params['before']:,} &rarr; {params['after']:,}" in section


def test_dw_rows_show_channels_and_params_before_pw_removal(pw_report: tuple[Path, dict]) -> None:
    folder, report = pw_report
    original = onnx.load(folder / "m.onnx")
    weights = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    nodes = {n.name: n for n in original.graph.node}
    page = (folder / "r.html").read_text()
    shrunk = 0
    for row, pw in zip(report["dw_layers"], report["pw"]["dw_layers"]):
        assert pw["layer"] == row["name"] and pw["channels_after"] == row["channels"]
        node = nodes[row["name"]]
        assert pw["channels_before"] == weights[node.input[1]].shape[0]  # the original model's channel count
        assert pw["params_before"] == weights[node.input[1]].size + weights[node.input[2]].size
        line = page[page.index(f'<td class="name">{row["name"]}</td>'):]
        line = line[:line.index("</tr>")]
        if pw["channels_before"] != row["channels"]:
            shrunk += 1
            assert f"<td>{pw['channels_before']} &rarr; {row['channels']}</td>" in line
            assert f"<td>{pw['params_before']:,} &rarr; {row['params']:,} &rarr; {row['params_kept']:,}</td>" in line
    assert shrunk >= 2


def _png_width(png: bytes) -> int:
    return struct.unpack(">I", png[16:20])[0]


def test_sensitivity_legend_keeps_full_names_and_distinct_colours() -> None:
    from deprune_onnx.report.html import sensitivity_figure, sensitivity_plot

    names = [f"/backbone/stage{i // 4}/block{i}/depthwise_separable/dw_conv_with_a_long_name/Conv" for i in range(25)]
    rows = [{"name": name, "sensitivity": {"measured_ratios": [0.0, 0.5, 0.9], "measured_kl": [0, 0.01 * i, 0.1 * i],
                                           "chosen_ratio": 0.5, "predicted_kl": 0.01 * i}}
            for i, name in enumerate(names)]
    report = {"dw_layers": rows}
    figure = sensitivity_figure(report)
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_legend().get_texts()] == [f"{i}: {n}" for i, n in enumerate(names)]
    curves = [line for line in axis.get_lines() if line.get_label() in {f"{i}: {n}" for i, n in enumerate(names)}]
    assert len({tuple(line.get_color()) for line in curves}) == len(names)
    png = sensitivity_plot(report)
    assert _png_width(png) > 7 * 110  # the legend beside the 7-inch axes widened the picture, it was not cut


def test_layer_chart_has_one_legend_with_three_colours(pw_report: tuple[Path, dict]) -> None:
    from deprune_onnx.report.html import layer_figure

    figure = layer_figure(pw_report[1])
    legends = [axis.get_legend() for axis in figure.axes if axis.get_legend() is not None]
    assert len(legends) == 1
    assert [t.get_text() for t in legends[0].get_texts()] == ["achieved PR", "target PR", "tile-model speedup"]
