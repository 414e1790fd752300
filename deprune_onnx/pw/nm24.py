"""2:4 (N:M with N=2, M=4) masks on PW weights, for TensorRT's sparse tensor cores (``--pw-method nm24``).

Ampere and newer tensor cores skip half of the multiply-adds when every group of 4 consecutive weights along the
reduction axis holds at most 2 non-zeros. For a 1x1 conv weight [C_out, C_in, 1, 1] the reduction axis is C_in,
so each filter's input channels are cut into groups of 4 and the 2 largest |w| of each group are kept (ties:
lower index). Zeros are written, shapes never change, and no channel is removed.

Rule for "qualifies": C_in % 4 == 0 (otherwise the last group is incomplete and the pattern is not 2:4 along
the whole axis, so TensorRT would not pick a sparse kernel). Whether TensorRT really runs a layer sparse is its
own build-time choice (``trtexec --sparsity=enable`` logs the layers it picked); tiny GEMMs often stay dense.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from deprune_onnx.analysis import ModelAnalysis, analyze
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.pw.constants import ConstantWriter

GROUP = 4
KEEP = 2


def mask_2_of_4(weight: np.ndarray) -> np.ndarray:
    """Zero the 2 smallest |w| of every 4 consecutive input channels of each filter ([C_out, C_in, ...])."""
    c_out, c_in = weight.shape[:2]
    taps = int(np.prod(weight.shape[2:], dtype=np.int64))
    groups = weight.reshape(c_out, c_in // GROUP, GROUP, taps)
    order = np.argsort(-np.abs(groups), axis=2, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :, :KEEP], True, axis=2)
    return np.where(keep, groups, 0).astype(weight.dtype).reshape(weight.shape)


def apply_nm24(model: onnx.ModelProto, analysis: ModelAnalysis | None = None, *, in_place: bool = False
               ) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """A copy of ``model`` (or ``model`` itself with ``in_place=True``) with 2:4 masks on every PW layer that
    qualifies, and one report row per PW layer."""
    analysis = analyze(model) if analysis is None else analysis
    if in_place:
        result = model
    else:
        result = onnx.ModelProto()
        result.CopyFrom(model)
    index = GraphIndex(result.graph)
    writer = ConstantWriter(result.graph)
    nodes = {node.name: node for node in result.graph.node}
    rows: list[dict[str, Any]] = []
    for layer in analysis.pw_layers:
        node = nodes[layer.name]
        weight = index.constant(node.input[1])
        row: dict[str, Any] = {
            "layer": layer.name, "in_channels": layer.in_channels, "out_channels": layer.out_channels,
            "qualifies": layer.in_channels % GROUP == 0, "sparsity_before": float(np.mean(weight == 0)),
            "sparsity_after": float(np.mean(weight == 0)), "reason": None}
        if not row["qualifies"]:
            row["reason"] = f"C_in={layer.in_channels} is not a multiple of {GROUP}"
        else:
            masked = mask_2_of_4(weight)
            writer.write(node, 1, masked)
            row["sparsity_after"] = float(np.mean(masked == 0))
        rows.append(row)
    writer.drop_unused()
    return result, rows
