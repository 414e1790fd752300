"""Progress bars and pass logging: silent by default in scripts, one line per pass with -v, nothing with -q."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from support.samples import SAMPLE_MODEL
from deprune_onnx import progress as progress_module
from deprune_onnx.cli.main import main

PASSES = ("load", "analyze", "pw", "plan", "apply", "rewrite", "save")


def test_verbose_logs_every_pass_with_time_and_memory(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["prune", str(SAMPLE_MODEL), str(tmp_path / "o.onnx"), "-v"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("deprune-onnx [I] pass")]
    assert [line.split()[3] for line in lines] == list(PASSES)
    assert all(line.rstrip().endswith("MB)") and " s " in line for line in lines)


def test_quiet_prints_nothing_and_default_logs_nothing(tmp_path: Path) -> None:
    quiet = CliRunner().invoke(main, ["prune", str(SAMPLE_MODEL), str(tmp_path / "q.onnx"), "-q", "-v"])
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    normal = CliRunner().invoke(main, ["prune", str(SAMPLE_MODEL), str(tmp_path / "n.onnx")])
    assert normal.exit_code == 0 and normal.stderr == ""


def test_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [1, 2, 3]
    progress_module.configure_progress(None)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert progress_module.progress(items, "x") is items
    progress_module.configure_progress(True)
    try:
        bar = progress_module.progress(items, "x")
        assert bar is not items and list(bar) == items
        with progress_module.byte_progress(10, "w") as advance:
            advance(10)
    finally:
        progress_module.configure_progress(None)
    progress_module.configure_progress(False)
    assert progress_module.progress(items, "x") is items
    progress_module.configure_progress(None)


@pytest.mark.model
def test_calibration_and_allocation_report_through_the_progress_bars(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--calib --allocate: the sensitivity and refit loops draw tqdm bars on a terminal, nothing with -q (off a
    terminal progress_enabled() is False: test_bars_only_on_a_terminal)."""
    from support.samples import imagenet_samples

    args = ["prune", str(SAMPLE_MODEL), str(tmp_path / "c.onnx"), "--dw-ratio", "0.5", "--calib",
            str(imagenet_samples()), "--calib-n", "2", "--calib-crops", "1", "--allocate", "kl",
            "--allocate-samples", "2", "--allocate-ratios", "0.75"]
    # as on a terminal: on unless a command turned bars off (--quiet)
    monkeypatch.setattr(progress_module, "progress_enabled", lambda: progress_module._enabled is not False)
    monkeypatch.setattr(progress_module, "SHOW_AFTER_SECONDS", 0)
    shown = CliRunner().invoke(main, args)
    assert shown.exit_code == 0, shown.output
    assert "sensitivity" in shown.stderr and "refit" in shown.stderr and "\033[K" not in shown.stderr
    quiet = CliRunner().invoke(main, args + ["-q"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
