"""``deprune-onnx sweep`` and ``deprune-onnx report``: the files they write and what is in them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.cli_testing import run_cli
from support.samples import imagenet_samples, sample_model

pytestmark = pytest.mark.model


def test_sweep_table_json_and_overlap_warning(tmp_path: Path) -> None:
    images = imagenet_samples() / "imagenet_0[0-3]_*.jpg"
    result = run_cli("sweep", sample_model("mobilenet_v3_small"), "--images", images, "--ratios", "0,0.5",
                     "--methods", "b,channel", "--calib", imagenet_samples() / "imagenet_00_*.jpg",
                     "--calib-crops", "2", "-o", tmp_path, "--no-plot")
    assert result.exit_code == 0, result.output
    assert "both calibration and evaluation images" in result.output
    data = json.loads((tmp_path / "sweep.json").read_text())
    rows = {(r["method"], r["ratio"], r["reconstruction"]): r for r in data["rows"]}
    assert len(rows) == 8
    for method in ("b", "channel"):
        assert rows[(method, 0.0, False)]["agreement"] == 1.0 and rows[(method, 0.0, False)]["kl_mean"] < 1e-9
        assert rows[(method, 0.5, False)]["kl_mean"] > 0
    table = (tmp_path / "sweep.md").read_text()
    assert table.startswith("| method | DW PR |") and "KL +calib" in table and table.count("\n") == 6


def test_report_renders_every_layer(tmp_path: Path) -> None:
    out = tmp_path / "p.onnx"
    assert run_cli("prune", sample_model("mobilenet_v2"), out, "--dw-ratio", "0.5", "-q").exit_code == 0
    page = tmp_path / "report.html"
    result = run_cli("report", tmp_path / "p.report.json", "-o", page)  # the test extra installs matplotlib
    assert result.exit_code == 0, result.output
    text = page.read_text()
    report = json.loads((tmp_path / "p.report.json").read_text())
    assert all(row["name"] in text for row in report["dw_layers"]) and "DW-Pat. 9u8o" in text
    assert (tmp_path / "report.layers.png").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    failed = run_cli("report", bad, "-o", tmp_path / "x.html", "--no-plot")
    assert failed.exit_code == 2 and "not a deprune-onnx report" in failed.output


def test_sweep_plot_is_a_png(tmp_path: Path) -> None:
    result = run_cli("sweep", sample_model("mobilenet_v3_small"), "--images", imagenet_samples() / "imagenet_00_*.jpg",
                     "--ratios", "0.3", "--methods", "b", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
