"""Every file a command writes gets the mode the umask asks for, like a plain ``open(path, "w")`` (issue #12.7).

The outputs are staged in temporary files (0600) and renamed into place; the final files must not keep the
temporary file's mode: side files (.report.json, .plan.json, HTML, PNG, sweep files, npz) and the .onnx alike.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from support.cli_testing import run_cli
from support.samples import imagenet_samples, sample_model

pytestmark = pytest.mark.model  # every command on a real sample model, twice


@pytest.fixture
def umask(request: pytest.FixtureRequest):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True, ids=["022", "027"])
def test_every_output_respects_the_umask(tmp_path: Path, umask: int) -> None:
    pruned = tmp_path / "p.onnx"
    commands = [
        ("prune", sample_model("mobilenet_v3_small"), pruned, "--dw-ratio", "0.5", "-q"),
        ("report", tmp_path / "p.report.json", "-o", tmp_path / "report.html"),
        ("export-masks", tmp_path / "p.plan.json", tmp_path / "masks.npz", "-q"),
        ("lower", pruned, tmp_path / "lowered.onnx"),
        ("sweep", sample_model("mobilenet_v3_small"), "--images", imagenet_samples() / "imagenet_00_*.jpg",
         "--ratios", "0.3", "--methods", "b", "-o", tmp_path / "sweep"),
    ]
    for args in commands:
        result = run_cli(*args)
        assert result.exit_code == 0, (args[0], result.output)
    written = {path.relative_to(tmp_path).as_posix(): stat.S_IMODE(path.stat().st_mode)
               for path in tmp_path.rglob("*") if path.is_file()}
    assert {"p.onnx", "p.report.json", "p.plan.json", "report.html", "masks.npz", "lowered.onnx",
            "sweep/sweep.json", "sweep/sweep.md", "sweep/sweep.png"} <= set(written)
    assert any(name.endswith(".png") and not name.startswith("sweep/") for name in written)  # the report's charts
    assert written == {name: 0o666 & ~umask for name in written}
