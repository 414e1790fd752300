"""DW masks as data for training code: a plan's keep masks written to a NumPy ``.npz`` file.

Why: users who fine-tune in their own PyTorch code need the masks by the names *their* code knows. Every pruned
DW layer gets a boolean array of its weight's shape (True = kept, the plan's convention) under

1. the ONNX weight initializer name the plan records (``DWLayerPlan.weight``, e.g. ``onnx::Conv_541``), always;
2. the PyTorch parameter name, when the ONNX names carry it (``pytorch_parameter_name``), as a second key
   holding the same array.

Layers the plan leaves dense (method ``none`` or a mask that keeps everything) are not written: a missing key
means "no mask", which is what training code should do with such a parameter.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.load_save import write_bytes_atomic
from deprune_onnx.plan import PruningPlan

# A PyTorch state-dict key of a conv weight: dotted identifiers / indices ending in ".weight".
_PARAMETER_NAME = re.compile(r"[A-Za-z_]\w*(?:\.\w+)*\.weight")
_SCOPE_SEGMENT = re.compile(r"\w+(?:\.\w+)*")


def pytorch_parameter_name(node_name: str, initializer_name: str) -> str | None:
    """The PyTorch parameter name of a conv weight, when the ONNX names carry it; else None.

    The rule, in order:

    - an initializer already named like a state-dict key (``features.1.conv.0.0.weight``: what
      ``torch.onnx.export`` keeps when it does not fold BatchNorm) is that name;
    - a node named by the TorchScript exporter's scopes, ``/features/features.1/conv/conv.0/conv.0.0/Conv``,
      gives the module path: each scope segment is a module's name from its last non-numeric part on
      (``conv.0.0`` for ``features.1.conv.0.0``), so a segment that extends the previous one by ``.<index>``
      replaces it and any other segment is a child: ``features.1`` + ``conv.0.0`` -> ``features.1.conv.0.0``,
      then ``.weight``. This is how folded-BatchNorm exports (initializers ``onnx::Conv_541``) keep the name;
    - anything else (``Conv@2``, ``Conv.3``, ``_v_578``: Paddle and other exporters) carries no PyTorch name.
    """
    if _PARAMETER_NAME.fullmatch(initializer_name):
        return initializer_name
    if not node_name.startswith("/"):
        return None
    segments = node_name.split("/")[1:-1]
    if not segments or not all(_SCOPE_SEGMENT.fullmatch(s) for s in segments):
        return None
    path: list[str] = []
    for segment in segments:
        if path and segment.startswith(path[-1] + ".") and segment[len(path[-1]) + 1:].isdigit():
            path[-1] = segment
        else:
            path.append(segment)
    return ".".join(path) + ".weight"


def plan_mask_arrays(plan: PruningPlan) -> dict[str, np.ndarray]:
    """Key -> boolean keep mask for every pruned DW layer of ``plan`` (see the module docstring for keys)."""
    arrays: dict[str, np.ndarray] = {}
    owner: dict[str, str] = {}
    for layer in plan.dw_layers:
        keep = layer.keep_mask()
        if layer.method == "none" or keep.all():
            continue
        keys = {layer.weight, pytorch_parameter_name(layer.name, layer.weight)} - {None}
        for key in sorted(keys):  # type: ignore[type-var]
            if key in arrays and not np.array_equal(arrays[key], keep):
                raise DepruneError(f"export-masks: layers '{owner[key]}' and '{layer.name}' both map to "
                                   f"'{key}' with different masks")
            arrays[key] = keep
            owner[key] = layer.name
    if not arrays:
        raise DepruneError("export-masks: the plan prunes no DW layer, there are no masks to export")
    return arrays


def save_masks(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as a compressed ``.npz`` atomically; ``np.load(path)[key]`` reads them back."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes_atomic(path, buffer.getvalue())
