"""Pointwise (PW) pruning that really removes channels, and 2:4 masks for TensorRT sparse tensor cores.

Flat public API (the prune pipeline and the PruningPlan use these):

- ``plan_pw_pruning(model, *, ratio, align=32, scope="project", analysis=None) -> PWPlan``
- ``apply_pw_plan(model, plan, *, in_place=False) -> (ModelProto, report)`` (removes the planned channels;
  validates the plan first; the report is ``pw_report``'s)
- ``apply_nm24(model, analysis=None, *, in_place=False) -> (ModelProto, rows)`` (2:4 masks on PW weights, shapes unchanged)
- ``pw_report(plan, summarize_model(model_before), model_after) -> dict`` (per group / PW layer rows, params and MACs)
- ``build_dependency_graph(model) -> DependencyGraph`` (the channel groups, for inspection)
"""
from deprune_onnx.pw.dependency import ChannelGroup, DependencyGraph, Member, build_dependency_graph
from deprune_onnx.pw.filter_pruning import aligned_kept_count, plan_pw_pruning, select_removed
from deprune_onnx.pw.metrics import ModelSummary, count_macs, count_params, pw_report, summarize_model
from deprune_onnx.pw.nm24 import apply_nm24
from deprune_onnx.pw.plan import PWGroupPlan, PWPlan
from deprune_onnx.pw.removal import apply_pw_plan

__all__ = [
    "ChannelGroup", "DependencyGraph", "Member", "ModelSummary", "PWGroupPlan", "PWPlan", "aligned_kept_count",
    "apply_nm24", "apply_pw_plan", "build_dependency_graph", "count_macs", "count_params", "plan_pw_pruning",
    "pw_report", "select_removed", "summarize_model",
]
