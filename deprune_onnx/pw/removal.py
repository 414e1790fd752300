"""Apply a PW plan: physically delete the planned channels from every tensor, weight and shape that holds them.

Inspect -> validate -> mutate: the dependency graph is rebuilt on the model the plan is applied to, every
planned group must be found there unchanged (same member tensors, offsets, channel counts) and prunable, and only
then are the edits the dependency rules recorded executed on a copy. The input model is never modified.
Intermediate ``value_info`` of the changed tensors is dropped (it would state the old channel counts); the graph
inputs and outputs never change. A final strict shape inference guards the invariant that the result is valid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import shape_inference

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.onnx_io.load_save import default_opset
from deprune_onnx.pw.constants import ConstantWriter
from deprune_onnx.pw.dependency import (DependencyGraph, RewriteSlice, RewriteSplit, SetGroupAttribute,
                                        SetShapeEntry, SliceConstant, build_dependency_graph)
from deprune_onnx.pw.metrics import pw_report, summarize_model
from deprune_onnx.pw.plan import PWPlan
from deprune_onnx.onnx_io.shapes import _weightless_copy


def removed_channels(graph: DependencyGraph, plan: PWPlan) -> dict[str, np.ndarray]:
    """Tensor -> sorted channel positions to delete; raises DepruneError where the plan does not fit."""
    by_key = {group.member_key(): group for group in graph.groups}
    removed: dict[str, np.ndarray] = {}
    for entry in plan.groups:
        group = by_key.get(entry.member_key())
        if group is None:
            tensors = ", ".join(sorted(str(m["tensor"]) for m in entry.members)[:3])
            raise DepruneError(f"PW plan group {entry.id} ({tensors}, ...) is not a channel group of this model "
                               "with the same channel counts; was the plan made for another model?")
        if group.reason is not None:
            raise DepruneError(f"PW plan group {entry.id} cannot be pruned in this model: {group.reason}")
        indices = np.asarray(entry.removed, dtype=np.int64)
        if group.size != entry.channels or indices.size >= group.size or (
                indices.size and (indices.min() < 0 or indices.max() >= group.size)):
            raise DepruneError(f"PW plan group {entry.id}: removed indices do not fit its {group.size} channels")
        for member in group.members:
            positions = member.offset + indices
            removed[member.tensor] = np.union1d(removed.get(member.tensor, positions), positions)
    return removed


class _Remover:
    """Executes the recorded edits for the tensors that lose channels."""

    def __init__(self, model: onnx.ModelProto, graph: DependencyGraph, removed: dict[str, np.ndarray]) -> None:
        self.model = model
        self.nodes = model.graph.node
        self.graph = graph
        self.removed = removed
        self.index = GraphIndex(model.graph)
        self.writer = ConstantWriter(model.graph)

    def new_channels(self, tensor: str) -> int:
        return self.graph.channels[tensor] - self.removed.get(tensor, np.zeros(0)).size

    def changed(self, *tensors: str) -> bool:
        return any(tensor in self.removed for tensor in tensors)

    def run(self) -> None:
        sliced: dict[tuple[int, int], np.ndarray] = {}
        for edit in self.graph.edits:
            if isinstance(edit, SliceConstant) and self.changed(edit.tensor):
                key = (edit.node, edit.input_index)
                value = sliced.get(key)
                if value is None:
                    value = self.index.constant(self.nodes[edit.node].input[edit.input_index])
                sliced[key] = np.delete(value, self.removed[edit.tensor], axis=edit.axis)
            elif isinstance(edit, SetGroupAttribute) and self.changed(edit.tensor):
                for attribute in self.nodes[edit.node].attribute:
                    if attribute.name == "group":
                        attribute.i = self.new_channels(edit.tensor)
            elif isinstance(edit, SetShapeEntry) and self.changed(edit.tensor):
                node = self.nodes[edit.node]
                value = self.index.constant(node.input[edit.input_index]).copy()
                value.reshape(-1)[edit.position] = self.new_channels(edit.tensor)
                self.writer.write(node, edit.input_index, value)
            elif isinstance(edit, RewriteSplit):
                self.rewrite_split(edit)
            elif isinstance(edit, RewriteSlice):
                self.rewrite_slice(edit)
        for (position, input_index), value in sliced.items():
            self.writer.write(self.nodes[position], input_index, value)
        self.writer.drop_unused()
        kept_info = [v for v in self.model.graph.value_info if v.name not in self.removed]
        del self.model.graph.value_info[:]
        self.model.graph.value_info.extend(kept_info)

    def rewrite_split(self, edit: RewriteSplit) -> None:
        node = self.nodes[edit.node]
        if not self.changed(node.input[0], *node.output):
            return
        sizes = np.array([self.new_channels(output) for output in node.output], dtype=np.int64)
        if (default_opset(self.model) or 13) >= 13:
            for attribute in list(node.attribute):
                if attribute.name in ("num_outputs", "split"):
                    node.attribute.remove(attribute)
            self.writer.write(node, 1, sizes)
        else:
            for attribute in list(node.attribute):
                if attribute.name == "split":
                    node.attribute.remove(attribute)
            node.attribute.append(onnx.helper.make_attribute("split", sizes.tolist()))

    def rewrite_slice(self, edit: RewriteSlice) -> None:
        node = self.nodes[edit.node]
        x, y = node.input[0], node.output[0]
        if not self.changed(x, y):
            return
        starts = self.index.constant(node.input[1]).copy()
        ends = self.index.constant(node.input[2]).copy()
        size = self.graph.channels[x]
        start = int(starts.reshape(-1)[edit.axis_position])
        start = min(max(start + size if start < 0 else start, 0), size)
        new_start = start - int(np.count_nonzero(self.removed.get(x, np.zeros(0)) < start))
        starts.reshape(-1)[edit.axis_position] = new_start
        ends.reshape(-1)[edit.axis_position] = new_start + self.new_channels(y)
        self.writer.write(node, 1, starts)
        self.writer.write(node, 2, ends)


def apply_pw_plan(model: onnx.ModelProto, plan: PWPlan, *, in_place: bool = False
                  ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``model`` with the plan's channels removed: a copy, or ``model`` itself with ``in_place=True`` (the prune
    pipeline owns its model, and a copy would double the memory of a multi-GB model), and the record of the
    removal (``metrics.pw_report``: every group, channels, params and MACs before and after).

    Raises DepruneError when the plan does not match the model (another model, edited shapes, a group that
    cannot be pruned here, indices out of range); the model is then unchanged.
    """
    before = summarize_model(model)
    if in_place:
        result = model
    else:
        result = onnx.ModelProto()
        result.CopyFrom(model)
    if plan.groups:
        _remove(result, plan)
    return result, pw_report(plan, before, result)


def _remove(result: onnx.ModelProto, plan: PWPlan) -> None:
    checkable = _consistent(result)  # models that arrive with stale shape annotations cannot be checked
    graph = build_dependency_graph(result)
    removed = removed_channels(graph, plan)
    _Remover(result, graph, removed).run()
    if checkable:
        try:  # the dependency rules guarantee consistent shapes; a failure here is a bug, never a user error
            shape_inference.infer_shapes(_weightless_copy(result), check_type=True, strict_mode=True)
        except Exception as exc:
            raise RuntimeError(f"internal error: PW channel removal produced an inconsistent model ({exc})") from exc


@dataclass(frozen=True)
class RemovedIndices:
    """What a PW plan deletes from one constant input of one node of the model it was made for: positions
    (sorted, in the original tensor) along each ONNX axis of ``constant`` (the input's name, as the node reads
    it: an initializer, or the head of an Identity/Cast chain)."""

    node: str
    op_type: str
    input_index: int
    constant: str
    shape: tuple[int, ...]
    removed: dict[int, np.ndarray]

    def keep_mask(self) -> np.ndarray:
        """Boolean array of ``shape``: False at every removed position of every axis."""
        keep = np.ones(self.shape, dtype=bool)
        for axis, positions in self.removed.items():
            index = [slice(None)] * len(self.shape)
            index[axis] = positions
            keep[tuple(index)] = False
        return keep


def removed_constant_indices(model: onnx.ModelProto, plan: PWPlan) -> list[RemovedIndices]:
    """Every constant input (weights, biases, BN parameters, classifier) that ``apply_pw_plan(model, plan)``
    shrinks, with the removed positions per axis, in node order. ``model`` is the model the plan was made for,
    with unique node names (as the prune pipeline has it); it is not modified. Raises DepruneError like
    apply_pw_plan when the plan does not fit the model."""
    graph = build_dependency_graph(model)
    removed = removed_channels(graph, plan) if plan.groups else {}
    per_input: dict[tuple[int, int], dict[int, np.ndarray]] = {}
    for edit in graph.edits:
        if isinstance(edit, SliceConstant) and edit.tensor in removed:
            axes = per_input.setdefault((edit.node, edit.input_index), {})
            axes[edit.axis] = np.union1d(axes.get(edit.axis, removed[edit.tensor]), removed[edit.tensor])
    index = GraphIndex(model.graph)
    result = []
    for (position, input_index), axes in sorted(per_input.items()):
        node = model.graph.node[position]
        constant = node.input[input_index]
        result.append(RemovedIndices(node.name, node.op_type, input_index, constant,
                                     tuple(index.constant(constant).shape), dict(sorted(axes.items()))))
    return result


def _consistent(model: onnx.ModelProto) -> bool:
    try:
        shape_inference.infer_shapes(_weightless_copy(model), check_type=True, strict_mode=True)
    except Exception:
        return False
    return True
