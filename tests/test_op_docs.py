"""The Python example of docs/op.md runs as written (docs that are executed cannot rot)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from op_testing import MODELS_DIR

DOC = Path(__file__).resolve().parents[1] / "docs" / "op.md"


@pytest.mark.skipif(not (MODELS_DIR / "mobilenet_v2_torchvision.onnx").exists(), reason="shared models missing")
def test_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/op.md lost its Python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert "clip" in capsys.readouterr().out
    assert not any(n.op_type == "DRSparseDepthwiseConv" for n in namespace["dense_again"].graph.node)
