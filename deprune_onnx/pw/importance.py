"""Filter importance for PW pruning: l2 norm of each output filter, BN scale folded in, summed over a group.

Li et al.'s filter pruning (the paper's PW rule) ranks the output filters of a conv by their l2 norm. When a
BatchNormalization follows the conv, the channel reaching the next layer is scaled by |gamma / sqrt(var + eps)|,
so that factor multiplies the norm. A group with several producers (a residual chain) sums their norms, since
removing a group channel removes it from every producer. SE expand convs also produce group channels (the gate),
but a gate says how much of a channel passes, not what it carries; they count only when nothing else produces
the group. Depthwise convs carry the channels through and are not scored.
"""
from __future__ import annotations

import numpy as np
import onnx

from deprune_onnx.onnx_io.graph import GraphIndex, node_attributes
from deprune_onnx.pw.dependency import ChannelGroup, DependencyGraph


def _bn_scale(index: GraphIndex, tensor: str) -> np.ndarray | None:
    """|gamma / sqrt(var + eps)| of the BatchNormalization that is the only reader of ``tensor``, if any."""
    user = index.only_consumer(tensor)
    if user is None or user.op_type != "BatchNormalization":
        return None
    gamma, var = index.constant(user.input[1]), index.constant(user.input[4])
    if gamma is None or var is None:
        return None
    eps = float(node_attributes(user).get("epsilon", 1e-5))
    return np.abs(gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps))


def group_importance(model: onnx.ModelProto, graph: DependencyGraph, group: ChannelGroup,
                     se_convs: set[str], index: GraphIndex | None = None) -> tuple[np.ndarray, str]:
    """Per group channel: summed (BN-scaled) l2 norms of the producers' filters; and the rule used."""
    index = GraphIndex(model.graph) if index is None else index
    producers = [m for m in group.members if m.tensor in graph.origin_nodes]
    feature = [m for m in producers if model.graph.node[graph.origin_nodes[m.tensor]].name not in se_convs]
    scores = np.zeros(group.size, dtype=np.float64)
    rule = "l2"
    for member in feature or producers:
        node = model.graph.node[graph.origin_nodes[member.tensor]]
        weight = index.constant(node.input[1]).astype(np.float64)
        norms = np.sqrt(np.square(weight).reshape(weight.shape[0], -1).sum(axis=1))
        scale = _bn_scale(index, member.tensor)
        if scale is not None:
            norms = norms * scale
            rule = "l2*bn"
        scores += norms[member.offset:member.offset + group.size]
    return scores, rule
