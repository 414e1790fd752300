"""Decide which PW channels to remove: l2 filter ranking, kept count aligned to the tile, per dependency group.

Why aligned: a 1x1 conv runs as a GEMM whose N (output channels) is processed in tiles of 32 (8 for small
tiles); keeping 40 channels costs as much as keeping 64. So the kept count is a multiple of ``align``: the
multiple nearest to the target ``channels * (1 - ratio)``, which keeps the achieved ratio within one alignment
step of the target. A group with fewer channels than ``align`` (or where the nearest choice is all of them) is
left whole: cutting it below one tile saves nothing. Ties in the target go to the larger kept count (prune less);
ties in importance go to the lower channel index, so plans are deterministic.
"""
from __future__ import annotations

import numpy as np
import onnx

from deprune_onnx.analysis import ModelAnalysis, analyze
from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.pw.dependency import ChannelGroup, build_dependency_graph
from deprune_onnx.pw.importance import group_importance
from deprune_onnx.pw.plan import SCOPES, PWGroupPlan, PWPlan
from deprune_onnx.onnx_io.shapes import infer_tensor_shapes


def aligned_kept_count(channels: int, ratio: float, align: int) -> int:
    """Channels to keep: the multiple of ``align`` (or all ``channels``) nearest to ``channels * (1 - ratio)``."""
    target = channels * (1.0 - ratio)
    candidates = np.append(np.arange(align, channels + 1, align), channels)
    distance = np.abs(candidates - target)
    best = candidates[distance <= distance.min() + 1e-9]
    return int(max(1, best.max()))


def select_removed(importance: np.ndarray, kept: int) -> list[int]:
    """Indices of the ``len(importance) - kept`` least important channels (stable: lower index first), sorted."""
    order = np.argsort(importance, kind="stable")
    return sorted(int(i) for i in order[:importance.size - kept])


def _check_options(ratio: float, align: int, scope: str) -> None:
    if not 0.0 <= ratio < 1.0:
        raise DepruneError(f"--pw-ratio {ratio}: must be in [0, 1)")
    if align < 1:
        raise DepruneError(f"--pw-align {align}: must be a positive integer (32 or 8 for GPU tiles)")
    if scope not in SCOPES:
        raise DepruneError(f"--pw-scope {scope!r}: must be one of {', '.join(SCOPES)}")


def _entry(group: ChannelGroup, ratio: float, align: int) -> PWGroupPlan:
    return PWGroupPlan(
        id=group.id, producers=list(group.origins), readers=list(group.readers),
        members=[{"tensor": m.tensor, "offset": m.offset, "channels": m.channels} for m in group.members],
        channels=group.size, kept=group.size, removed=[], target_ratio=ratio, ratio=0.0,
        aligned=group.size % align == 0, importance="l2", reason=group.reason)


def plan_pw_pruning(model: onnx.ModelProto, *, ratio: float, align: int = 32, scope: str = "project",
                    analysis: ModelAnalysis | None = None, energy: dict[str, np.ndarray] | None = None) -> PWPlan:
    """Plan structural PW pruning.

    scope "project" (the paper's default) prunes the groups produced by a block's projection PW (PW-conv2);
    in networks without expansion convs (PP-LCNet) that PW also feeds the next DW conv, which then loses the
    same channels. scope "all" prunes every group that starts at a Conv: expansion PWs (their DW loses
    channels), the stem, the head conv before the classifier, SE hidden channels.
    """
    _check_options(ratio, align, scope)
    shapes = infer_tensor_shapes(model)
    analysis = analyze(model, shapes) if analysis is None else analysis
    graph = build_dependency_graph(model, shapes)
    projections = {block.project_pw for block in analysis.blocks if block.project_pw}
    se_convs = set(analysis.se_convs)
    index = GraphIndex(model.graph)
    plan = PWPlan(ratio=ratio, align=align, scope=scope)
    for group in graph.groups:
        entry = _entry(group, ratio, align)
        if scope == "project" and not projections.intersection(group.origins):
            entry.reason = "out of scope 'project': no projection PW produces these channels"
        if entry.reason is None:
            importance, entry.importance = group_importance(model, graph, group, se_convs, index, energy)
            kept = aligned_kept_count(group.size, ratio, align)
            if kept == group.size:
                entry.reason = (f"keeps all {group.size} channels: nearest kept count to the target that is a "
                                f"multiple of {align}" if ratio > 0 else "pw ratio is 0")
            else:
                entry.kept, entry.removed = kept, select_removed(importance, kept)
                entry.ratio, entry.aligned = len(entry.removed) / group.size, kept % align == 0
        (plan.skipped if entry.reason else plan.groups).append(entry)
    return plan
