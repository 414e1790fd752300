"""Helpers shared by the CLI tests: invoke ``deprune-onnx`` in-process and check the one-line error contract."""
from __future__ import annotations

from click.testing import CliRunner, Result

from deprune_onnx.cli.main import main


def run_cli(*args: object, env: dict[str, str] | None = None) -> Result:
    """``deprune-onnx ARGS`` (each argument turned into a string), stdout and stderr captured apart."""
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def assert_one_line_error(result: Result, needle: str) -> None:
    """Exit 2 with exactly one 'deprune-onnx: error: ...' line that contains ``needle``."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deprune-onnx: error:") and needle in lines[0], result.output
