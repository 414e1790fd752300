"""deprune-onnx: DEPrune (NeurIPS 2024) depthwise-separable convolution pruning for ONNX models.

The flat public API below is imported lazily (PEP 562), so ``import deprune_onnx`` and the CLI's ``--help``
stay instant; each name loads its module on first use.

    from deprune_onnx import load_model, prune_model, PruneOptions, DWOptions, save_model
    result = prune_model(load_model("model.onnx"), PruneOptions(dw=DWOptions(method="bh", dw_ratio=0.5)))
    save_model(result.model, "pruned.onnx")
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_model": "deprune_onnx.onnx_io.load_save",
    "save_model": "deprune_onnx.onnx_io.load_save",
    "analyze": "deprune_onnx.analysis",
    "DWOptions": "deprune_onnx.options",
    "PWOptions": "deprune_onnx.options",
    "PruneOptions": "deprune_onnx.options",
    "OptionError": "deprune_onnx.options",
    "check_prune_options": "deprune_onnx.options",
    "PruneResult": "deprune_onnx.pipeline",
    "prune_model": "deprune_onnx.pipeline",
    "prune_file": "deprune_onnx.pipeline",
    "PrunedFiles": "deprune_onnx.pipeline",
    "PruneRecord": "deprune_onnx.record",
    "CalibOptions": "deprune_onnx.options",
    "PruningPlan": "deprune_onnx.plan",
    "load_plan": "deprune_onnx.plan",
    "rewrite_to_plugin": "deprune_onnx.op.rewrite",
    "lower": "deprune_onnx.op.lower",
    "run_dr_sparse_dwconv": "deprune_onnx.op.oracle",
    "DepruneError": "deprune_onnx.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'deprune_onnx' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
