"""Filter importance for PW pruning: l2 norm of each output filter, BN scale folded in, summed over a group.

Li et al.'s filter pruning (the paper's PW rule) ranks the output filters of a conv by their l2 norm. When a
BatchNormalization follows the conv, the channel reaching the next layer is scaled by |gamma / sqrt(var + eps)|,
so that factor multiplies the norm. A group with several producers (a residual chain) sums their norms, since
removing a group channel removes it from every producer. SE expand convs also produce group channels (the gate),
but a gate says how much of a channel passes, not what it carries; they count only when nothing else produces
the group. Depthwise convs carry the channels through and are not scored.

With calibration activations (``prune --calib`` with ``--pw-ratio``) the score is what a channel feeds forward
instead: for every reader that is a Conv with group 1, sum_over_readers E[x_c^2] * ||W_reader[:, c]||^2, the
energy channel c contributes to the reader's output (a squared, structured form of Wanda's |w| * ||x||
score). Readers of another kind (Gemm, grouped convs) do not count; a group
with no such reader keeps the l2 rule.
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


def activation_readers(model: onnx.ModelProto, group: ChannelGroup) -> list[tuple[onnx.NodeProto, int]]:
    """The group's readers whose contribution ``group_importance`` can score: Conv nodes with group 1 whose input
    is a member tensor; with the member's offset."""
    offsets = {m.tensor: m.offset for m in group.members}
    nodes = {node.name: node for node in model.graph.node}
    readers = []
    for name in group.readers:
        node = nodes.get(name)
        if node is not None and node.op_type == "Conv" and node.input[0] in offsets and \
                int(node_attributes(node).get("group", 1)) == 1:
            readers.append((node, offsets[node.input[0]]))
    return readers


def group_importance(model: onnx.ModelProto, graph: DependencyGraph, group: ChannelGroup,
                     se_convs: set[str], index: GraphIndex | None = None,
                     energy: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, str]:
    """Per group channel: summed (BN-scaled) l2 norms of the producers' filters, or with ``energy`` (tensor ->
    mean squared activation per channel, on calibration images) the energy each channel feeds its readers;
    and the rule used ("l2", "l2*bn" or "activation")."""
    index = GraphIndex(model.graph) if index is None else index
    if energy is not None:
        readers = [(node, offset) for node, offset in activation_readers(model, group) if node.input[0] in energy]
        if readers:
            scores = np.zeros(group.size, dtype=np.float64)
            for node, offset in readers:
                weight = index.constant(node.input[1]).astype(np.float64)
                columns = np.square(weight).sum(axis=(0, *range(2, weight.ndim)))
                channels = slice(offset, offset + group.size)
                scores += energy[node.input[0]][channels] * columns[channels]
            return scores, "activation"
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
