"""Model size and cost before/after PW pruning, and the PW report rendered from a plan.

Params: elements of the floating-point initializers (what the model file stores as weights). MACs:
multiply-accumulates of Conv, Gemm and MatMul at the model's static input size (a symbolic batch counts as 1).
Element-wise ops are not counted; they are noise next to the convolutions of these networks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from deprune_onnx.analysis import analyze
from deprune_onnx.onnx_io.graph import node_attributes
from deprune_onnx.pw.plan import PWGroupPlan, PWPlan
from deprune_onnx.onnx_io.shapes import Shape, concrete, infer_tensor_shapes


def count_params(model: onnx.ModelProto) -> int:
    return int(sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer
                   if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f"))


def count_macs(model: onnx.ModelProto, shapes: dict[str, Shape] | None = None) -> int:
    shapes = infer_tensor_shapes(model) if shapes is None else shapes
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        out, weight = concrete(shapes.get(node.output[0])), concrete(shapes.get(node.input[1]))
        if out is None or weight is None:
            continue
        if node.op_type == "Conv":
            total += int(np.prod(out, dtype=np.int64)) * int(np.prod(weight[1:], dtype=np.int64))
        else:
            transposed = node.op_type == "Gemm" and node_attributes(node).get("transB", 0)
            reduction = weight[-1] if transposed else weight[-2]
            total += int(np.prod(out, dtype=np.int64)) * int(reduction)
    return total


def _group_row(entry: PWGroupPlan) -> dict[str, Any]:
    return {"group": entry.id, "producers": entry.producers, "readers": entry.readers,
            "channels_before": entry.channels, "channels_after": entry.kept, "target_ratio": entry.target_ratio,
            "ratio": entry.ratio, "aligned": entry.aligned, "importance": entry.importance,
            "pruned": entry.reason is None, "reason": entry.reason}


@dataclass(frozen=True)
class ModelSummary:
    """What the PW report needs of the model before pruning, so the pipeline can prune in place instead of
    keeping a second copy of a large model alive."""

    params: int
    macs: int
    pw_layers: tuple[tuple[str, int | None, int, int], ...]  # (name, block, out channels, in channels)
    dw_layers: tuple[tuple[str, int, int], ...] = ()  # (name, channels, params): what the DW report shows


def summarize_model(model: onnx.ModelProto) -> ModelSummary:
    analysis = analyze(model)
    layers = tuple((layer.name, layer.block, layer.out_channels, layer.in_channels) for layer in analysis.pw_layers)
    dw = tuple((layer.name, layer.out_channels, layer.params) for layer in analysis.dw_layers)
    return ModelSummary(count_params(model), count_macs(model), layers, dw)


def _layer_rows(before: ModelSummary, after: onnx.ModelProto) -> list[dict[str, Any]]:
    """Per PW layer of the original model: input/output channels before and after."""
    shapes = infer_tensor_shapes(after)
    weights = {node.name: shapes.get(node.input[1]) for node in after.graph.node if node.op_type == "Conv"}
    rows = []
    for name, block, out_channels, in_channels in before.pw_layers:
        weight = weights.get(name) or (out_channels, in_channels)
        rows.append({"layer": name, "block": block,
                     "out_channels_before": out_channels, "out_channels_after": int(weight[0]),
                     "in_channels_before": in_channels, "in_channels_after": int(weight[1])})
    return rows


def _dw_rows(before: ModelSummary, after: onnx.ModelProto) -> list[dict[str, Any]]:
    """Per DW layer of the original model: channels and params (weight + bias) before and after PW removal,
    which deletes whole DW channels where a group runs through the DW conv. A weight still behind an
    Identity/Cast chain afterwards was not touched (removal writes a fresh initializer), so it is unchanged."""
    dims = {t.name: list(t.dims) for t in after.graph.initializer}
    nodes = {node.name: node for node in after.graph.node}
    rows = []
    for name, channels, params in before.dw_layers:
        node = nodes.get(name)
        weight = dims.get(node.input[1]) if node is not None else None
        row = {"layer": name, "channels_before": channels, "channels_after": channels,
               "params_before": params, "params_after": params}
        if weight is not None:
            bias = dims.get(node.input[2], [0]) if len(node.input) > 2 and node.input[2] else [0]
            row.update(channels_after=int(weight[0]),
                       params_after=int(np.prod(weight, dtype=np.int64)) + int(np.prod(bias, dtype=np.int64)))
        rows.append(row)
    return rows


def pw_report(plan: PWPlan, model_before: ModelSummary, model_after: onnx.ModelProto) -> dict[str, Any]:
    """Report rows for each group (pruned and skipped, with reasons), each PW and DW layer, and model totals."""
    before, after = plan.channels_before, plan.channels_after
    return {
        "method": plan.method, "scope": plan.scope, "target_ratio": plan.ratio, "align": plan.align,
        "pw_channels": {"before": before, "after": after, "ratio": (before - after) / before if before else 0.0},
        "groups": [_group_row(entry) for entry in plan.groups + plan.skipped],
        "layers": _layer_rows(model_before, model_after),
        "dw_layers": _dw_rows(model_before, model_after),
        "params": {"before": model_before.params, "after": count_params(model_after)},
        "macs": {"before": model_before.macs, "after": count_macs(model_after)},
    }
