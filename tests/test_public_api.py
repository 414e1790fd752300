"""The flat public API of deprune_onnx resolves every name it promises, and importing it stays light."""
from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys

import deprune_onnx
from support.samples import SAMPLE_MODEL


def test_every_exported_name_resolves() -> None:
    for name in deprune_onnx.__all__:
        module = importlib.import_module(deprune_onnx._EXPORTS[name])
        assert getattr(deprune_onnx, name) is getattr(module, name), name


def test_import_does_not_load_onnx() -> None:
    code = "import sys, deprune_onnx, deprune_onnx.cli.main; print('onnx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_docstring_example_prunes_the_sample(tmp_path) -> None:
    from deprune_onnx import DWOptions, PruneOptions, load_model, prune_model, save_model

    result = prune_model(load_model(SAMPLE_MODEL), PruneOptions(dw=DWOptions(method="bh", dw_ratio=0.5)))
    save_model(result.model, tmp_path / "pruned.onnx")
    assert (tmp_path / "pruned.onnx").stat().st_size > 0 and result.plan.dw_pattern_string() == "9u8o"


def test_public_types_document_every_field() -> None:
    """Each exported dataclass names every one of its fields in its docstring (with units where they apply)."""
    types = [getattr(deprune_onnx, name) for name in deprune_onnx.__all__]
    documented = [cls for cls in types if dataclasses.is_dataclass(cls)]
    assert {cls.__name__ for cls in documented} >= {"PruningPlan", "PruneOptions", "PruneResult", "DWOptions",
                                                    "PWOptions", "CalibOptions", "PruneRecord"}
    for cls in documented:
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in (cls.__doc__ or "")]
        assert not missing, f"{cls.__name__}: {missing}"
