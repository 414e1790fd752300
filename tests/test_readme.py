"""README's first command (the newcomer's) works as written, and its test command is the one CI runs."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from support.cli_testing import run_cli
from support.samples import REPO


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_first_command_prunes_the_shipped_sample(tmp_path: Path, monkeypatch) -> None:
    install, make_dir, prune = [part.strip() for part in _bash_blocks()[0].strip().split("&&")]
    assert install == "pip install -e ." and make_dir == "mkdir -p out"
    args = shlex.split(prune)
    assert args[:2] == ["deprune-onnx", "prune"]
    monkeypatch.chdir(REPO)  # the sample path is relative to the repository root, as for a newcomer
    output = tmp_path / Path(args[3]).name  # not out/ in the checkout
    result = run_cli(*args[1:3], str(output), *args[4:])
    assert result.exit_code == 0, result.output
    assert "DW-Pat." in result.stdout and output.is_file() and output.with_suffix(".report.json").is_file()


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _bash_blocks()[1].strip().split("&&")[-1].strip()
    assert test_command == "python -m pytest -q tests"
    assert test_command in (REPO / ".ci" / "run").read_text()
