"""Which masks stay fixed during fine-tuning, and the check that nothing but kept weight values changed.

Masks never change unless asked (``resolve_masks``):

1. ``--plan FILE``: that plan;
2. else the plan ``prune`` wrote beside the pruned model (``PRUNED.plan.json``), when it exists;
3. else the DW zero pattern of the pruned model exactly as it is: every zero weight stays zero, every other
   weight trains; no structure rule is checked or enforced.

A plan must belong to the model: its layers exist with the same weight shapes and every weight it prunes is zero
in the model (a plan that would zero a live weight is refused, never applied). Re-alignment (``realign`` =
``b``/``bh``) happens only when asked: the zero pattern is checked and aligned like ``prune --keep-zeros
--method M``, and every layer whose mask changed is reported (weights newly pruned by over-alignment, zero-valued
taps restored by under-alignment).

``structure_changes`` compares the fine-tuned model with the pruned input independently of the plan's
bookkeeping: the same nodes (names, ops, inputs, outputs, attributes), the same initializers (names, shapes,
dtypes; so removed PW channels stay removed), and every DW weight the plan prunes is +0.0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from deprune_onnx.analysis import analyze
from deprune_onnx.dw.planner import DWOptions
from deprune_onnx.errors import DepruneError
from deprune_onnx.pipeline import PruneOptions, make_keep_zeros_plan
from deprune_onnx.plan import PruningPlan

REALIGN_METHODS = ("b", "bh")


@dataclass
class MaskSource:
    """The fixed masks, where they came from, and (re-alignment only) what changed per layer."""

    plan: PruningPlan
    source: str
    changed: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "changed_layers": self.changed}


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Conv node name -> its constant weight."""
    initializers = {t.name: t for t in model.graph.initializer}
    return {node.name: numpy_helper.to_array(initializers[node.input[1]]) for node in model.graph.node
            if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in initializers}


def check_plan_fits(model: onnx.ModelProto, plan: PruningPlan, source: str) -> None:
    """A DepruneError naming ``source`` and the layer unless every plan layer exists with its shape and every
    weight it prunes is already zero in ``model``."""
    weights = _weights(model)
    for layer in plan.dw_layers:
        if layer.name not in weights:
            raise DepruneError(f"{source}: layer '{layer.name}' is not a Conv with a constant weight in the model")
        weight = weights[layer.name]
        if list(weight.shape) != list(layer.shape):
            raise DepruneError(f"{source}: layer '{layer.name}' has shape {list(weight.shape)} in the model, "
                               f"{layer.shape} in the plan")
        live = int(np.count_nonzero(weight[~layer.keep_mask()]))
        if live:
            raise DepruneError(f"{source}: layer '{layer.name}': the plan prunes {live} weight(s) that are not "
                               "zero in the model (not the plan this model was pruned with)")


def resolve_masks(student: onnx.ModelProto, plan: PruningPlan | None, plan_source: str | None,
                  realign: str | None, tile: int = 32) -> MaskSource:
    """The masks to keep fixed (see the module docstring); ``student`` is not modified."""
    if plan is not None:
        if realign is not None:
            raise DepruneError("--realign works on the zero pattern; it cannot be combined with --plan")
        check_plan_fits(student, plan, plan_source or "--plan")
        return MaskSource(plan, plan_source or "--plan")
    method = realign or "dcp"  # dcp: no rule checked, nothing aligned: the zero pattern as it is
    options = PruneOptions(dw=DWOptions(method=method, tile=tile), keep_zeros=True)
    plan = make_keep_zeros_plan(student, options, analyze(student))
    if realign is None:
        return MaskSource(plan, "zero pattern")
    weights = _weights(student)
    changed: dict[str, dict[str, int]] = {}
    for layer in plan.dw_layers:
        was_kept, keep = weights[layer.name] != 0, layer.keep_mask()
        pruned, restored = int(np.sum(was_kept & ~keep)), int(np.sum(~was_kept & keep))
        if pruned or restored:
            changed[layer.name] = {"newly_pruned": pruned, "restored_zero_taps": restored}
    return MaskSource(plan, f"zero pattern re-aligned to {realign}", changed)


def check_student_is_pruned(student: onnx.ModelProto, teacher: onnx.ModelProto, plan: PruningPlan,
                            student_name: str, teacher_name: str) -> None:
    """A DepruneError unless ``student`` is a pruned model distinct from ``teacher``: it has DW convs, and
    either some DW weight is masked or its weight shapes differ from the teacher's (PW channels removed); and
    ``teacher`` is not the pruned model itself. Why: the files swapped, or the unpruned model given as PRUNED.onnx,
    otherwise train and write a normal-looking "fine-tuned" model (a new user's trial, issue 15)."""
    if not analyze(student).dw_layers:
        raise DepruneError(f"{student_name}: no depthwise conv found, so no DW masks to keep fixed; finetune trains "
                           "models pruned by deprune-onnx (other models: your own training code, docs/finetune.md)")
    student_weights = {t.name: numpy_helper.to_array(t) for t in student.graph.initializer}
    teacher_weights = {t.name: numpy_helper.to_array(t) for t in teacher.graph.initializer}
    same_shapes = {k: v.shape for k, v in student_weights.items()} == {k: v.shape for k, v in teacher_weights.items()}
    masked = sum(int(np.count_nonzero(~layer.keep_mask())) for layer in plan.dw_layers)
    if not masked and same_shapes:
        raise DepruneError(f"{student_name}: nothing is pruned (no DW weight is zero and every weight has "
                           f"{teacher_name}'s shape): is it the unpruned model? Prune it first: deprune-onnx prune "
                           "MODEL.onnx PRUNED.onnx --format dense")
    if same_shapes and all(np.array_equal(value, teacher_weights[name]) for name, value in student_weights.items()):
        raise DepruneError(f"{teacher_name}: has the same weights as {student_name}, the pruned model; the teacher "
                           "is the unpruned model it was pruned from")


def structure_changes(pruned: onnx.ModelProto, tuned: onnx.ModelProto, plan: PruningPlan) -> list[str]:
    """Every difference between ``tuned`` and ``pruned`` other than the values of kept weights (empty: none)."""
    problems: list[str] = []
    def node_key(node: onnx.NodeProto) -> tuple[Any, ...]:
        return (node.name, node.op_type, node.domain, tuple(node.input), tuple(node.output),
                tuple(a.SerializeToString() for a in node.attribute))
    if [node_key(n) for n in pruned.graph.node] != [node_key(n) for n in tuned.graph.node]:
        problems.append("the nodes differ (names, ops, inputs, outputs or attributes)")
    def tensor_key(tensor: onnx.TensorProto) -> tuple[Any, ...]:
        return tensor.name, tuple(tensor.dims), tensor.data_type
    if [tensor_key(t) for t in pruned.graph.initializer] != [tensor_key(t) for t in tuned.graph.initializer]:
        problems.append("the initializers differ in name, shape or dtype (a removed channel came back?)")
    weights = _weights(tuned)
    for layer in plan.dw_layers:
        weight = weights.get(layer.name)
        if weight is None:
            problems.append(f"DW layer '{layer.name}' is missing")
            continue
        pruned_values = weight[~layer.keep_mask()]
        if np.any(pruned_values != 0) or np.any(np.signbit(pruned_values)):
            problems.append(f"DW layer '{layer.name}': {int(np.count_nonzero(pruned_values))} pruned weight(s) "
                            "are not +0.0")
    return problems
