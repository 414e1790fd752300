"""DW masks as data for training code: a plan's keep masks written to a NumPy ``.npz`` file.

Why: users who fine-tune in their own PyTorch code need the masks by the names *their* code knows. Every pruned
DW layer gets a boolean array of its weight's shape (True = kept, the plan's convention) under

1. the ONNX weight initializer name the plan records (``DWLayerPlan.weight``, e.g. ``onnx::Conv_541``), always;
2. the PyTorch parameter name, when the ONNX names carry it (``pytorch_parameter_name``), as a second key
   holding the same array.

Layers the plan leaves dense (method ``none`` or a mask that keeps everything) are not written: a missing key
means "no mask", which is what training code should do with such a parameter.

PW channel removal (``prune --pw-ratio``) makes the DW masks of the plan refer to the *reduced* model, whose
tensors have fewer channels than the user's own model and code. Given the model ``prune`` read, the masks are
exported in its *original* shapes instead: every constant the removal shrinks (PW filters, the readers' input
channels, DW channels, biases, the classifier) gets a keep mask of its original shape with the removed channels
False, combined with the DW mask where there is one, so fixing those zeros while training the original
architecture computes what the pruned model computes. The removed positions themselves are written per tensor
and axis (``pw_removed/axis<k>/<key>``, int64), and ``__shapes__`` says which shapes the masks refer to
(``original`` or ``reduced``).
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import onnx

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.graph import ensure_unique_node_names
from deprune_onnx.onnx_io.load_save import write_bytes_atomic
from deprune_onnx.plan import PruningPlan
from deprune_onnx.pw.removal import RemovedIndices, removed_constant_indices

# A PyTorch state-dict key of a conv weight: dotted identifiers / indices ending in ".weight".
_PARAMETER_NAME = re.compile(r"[A-Za-z_]\w*(?:\.\w+)*\.weight")
_SCOPE_SEGMENT = re.compile(r"\w+(?:\.\w+)*")


SHAPES = ("original", "reduced")
SHAPES_KEY = "__shapes__"
REMOVED_PREFIX = "pw_removed"


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


def _put(arrays: dict[str, np.ndarray], owner: dict[str, str], keys: set[str | None], value: np.ndarray,
         source: str) -> None:
    """Store ``value`` under every key; two different arrays for one key is an error naming both sources."""
    for key in sorted(k for k in keys if k):
        if key in arrays and not np.array_equal(arrays[key], value):
            raise DepruneError(f"export-masks: '{owner[key]}' and '{source}' both map to '{key}' with different "
                               "arrays")
        arrays[key] = value
        owner[key] = source


def _removals(plan: PruningPlan, model: onnx.ModelProto | None) -> list[RemovedIndices]:
    """What the plan's PW groups removed from ``model`` (the model prune read); [] without PW removal."""
    if not removes_pw_channels(plan) or model is None:
        return []
    ensure_unique_node_names(model)  # as the prune pipeline did before planning
    return removed_constant_indices(model, plan.pw)


def removes_pw_channels(plan: PruningPlan) -> bool:
    """True when the plan's PW groups delete channels (so its DW masks have the reduced shapes)."""
    return plan.pw is not None and any(group.removed for group in plan.pw.groups)


def plan_mask_arrays(plan: PruningPlan, model: onnx.ModelProto | None = None,
                     shapes: str = "original") -> dict[str, np.ndarray]:
    """Key -> array for ``plan`` (see the module docstring for keys and shapes).

    ``shapes="original"`` needs ``model`` (the model prune read) when the plan removes PW channels;
    ``"reduced"`` writes the plan's masks as they are (the pruned model's shapes) plus, with ``model``, the
    removed positions. Raises DepruneError on a missing model, a plan that does not fit it, or no masks at all.
    """
    if shapes not in SHAPES:
        raise DepruneError(f"--shapes '{shapes}': expected one of {', '.join(SHAPES)}")
    pw_removal = removes_pw_channels(plan)
    if pw_removal and shapes == "original" and model is None:
        raise DepruneError("export-masks: the plan removes PW channels, so its DW masks have the reduced shapes; "
                           "pass --model ORIGINAL.onnx (the model prune read) for masks in its shapes, or "
                           "--shapes reduced for the pruned model's shapes")
    removals = _removals(plan, model)
    arrays: dict[str, np.ndarray] = {}
    owner: dict[str, str] = {}
    # DW masks; in original shapes, DW channels the PW removal deleted are pruned (False) too.
    by_input = {(r.node, r.input_index): r for r in removals}
    for layer in plan.dw_layers:
        keep = layer.keep_mask()
        removal = by_input.pop((layer.name, 1), None) if shapes == "original" else None
        weight = layer.weight
        if removal is not None:
            full = removal.keep_mask()
            full[full] = keep.reshape(-1)  # the kept positions, in order, are the reduced tensor
            keep, weight = full, removal.constant
        if (layer.method == "none" and removal is None) or keep.all():
            continue
        _put(arrays, owner, {weight, pytorch_parameter_name(layer.name, weight)}, keep, layer.name)
    for removal in removals:
        torch_name = pytorch_parameter_name(removal.node, removal.constant) \
            if removal.input_index == 1 and removal.op_type in ("Conv", "Gemm") else None
        keys = {removal.constant, torch_name}
        if shapes == "original" and (removal.node, removal.input_index) in by_input:
            _put(arrays, owner, keys, removal.keep_mask(), removal.node)
        for axis, positions in removal.removed.items():
            _put(arrays, owner, {f"{REMOVED_PREFIX}/axis{axis}/{key}" for key in keys if key},
                 positions.astype(np.int64), removal.node)
    if not any(not key.startswith(REMOVED_PREFIX) for key in arrays):
        raise DepruneError("export-masks: the plan prunes no DW layer and removes no PW channel, there are no "
                           "masks to export")
    arrays[SHAPES_KEY] = np.array("reduced" if pw_removal and shapes == "reduced" else "original")
    return arrays


def save_masks(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as a compressed ``.npz`` atomically; ``np.load(path)[key]`` reads them back."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes_atomic(path, buffer.getvalue())
