"""Fine-tuning with fixed DEPrune masks (``deprune-onnx finetune``): the optional PyTorch part of deprune-onnx.

Importing this package needs nothing beyond the base install; its modules need PyTorch and onnx2torch
(``pip install 'deprune-onnx[finetune]'``). Call ``require_torch()`` first: it turns a missing dependency into
one DepruneError line that says how to install it.

Modules: ``data`` (image sources, streamed training and validation views), ``structure`` (which masks stay
fixed; the check against the pruned input), ``convert`` (onnx2torch, parameter bindings, write-back),
``fixed_masks`` (zeros kept exactly), ``distill`` (the loss), ``train`` (epochs, schedules, validation,
checkpoints, DDP), ``distributed`` (torchrun process group), ``curves`` (the metrics PNG), ``run``
(``finetune_model``); ``python -m deprune_onnx.finetune`` is the torchrun entry point.
"""
from __future__ import annotations

import importlib.util

from deprune_onnx.errors import DepruneError
from deprune_onnx.extras import install_hint

INSTALL_HINT = install_hint("finetune")


def require_torch() -> None:
    """Raise one DepruneError line naming the install command when PyTorch or onnx2torch is missing."""
    missing = [name for name in ("torch", "onnx2torch") if importlib.util.find_spec(name) is None]
    if missing:
        raise DepruneError(f"finetune needs {' and '.join(missing)} (not installed): {INSTALL_HINT}")
