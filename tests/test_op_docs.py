"""The Python example of docs/op.md runs as written (docs that are executed cannot rot)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "op.md"


def test_python_example_runs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the example loads samples/... as a user in the repository root would
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/op.md lost its Python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert "clip" in capsys.readouterr().out
    assert not any(n.op_type == "DRSparseDepthwiseConv" for n in namespace["dense_again"].graph.node)
