"""Fold the constant chains in front of conv weights and biases, with onnx-graphsurgeon's constant folder.

Why: exporters leave weights behind ops that only rearrange constants; tf2onnx writes a depthwise kernel as
Reshape(Transpose(initializer [kh, kw, C, 1])). GraphIndex resolves the simple chains itself (Identity, Cast,
DequantizeLinear, Constant), but anything else would make the layer "computed at run time" and unprunable.
Only the chains feeding a Conv's weight or bias are folded, and only when every leaf is a constant (a
non-overridable initializer or a Constant node) and no op on the way is random, QDQ, custom or has a
subgraph; the
rest of the model is left exactly as it is. What cannot be folded is named by ``GraphIndex.not_constant_reason``.
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper

from deprune_onnx.logging_utils import LOGGER
from deprune_onnx.onnx_io.graph import GraphIndex, remove_unused, subgraphs

# Ops whose value is not a function of their inputs (folding would freeze one random draw), and the QDQ ops
# (folding would silently turn a quantized weight into a float one).
NOT_FOLDED_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                            "Multinomial", "Bernoulli", "QuantizeLinear", "DequantizeLinear"})


def _constant_chain(tensor: str, index: GraphIndex, chain: set[str]) -> bool:
    """Add to ``chain`` the names of the nodes computing ``tensor``; False when a leaf is not constant."""
    if tensor in index.initializers:
        return tensor not in index.overridable
    node = index.producer.get(tensor)
    if node is None or node.op_type in NOT_FOLDED_OPS or node.domain not in ("", "ai.onnx") or \
            subgraphs(node):
        return False
    if node.name in chain:
        return True
    chain.add(node.name)
    return all(_constant_chain(name, index, chain) for name in node.input if name)


def fold_conv_weight_chains(model: onnx.ModelProto) -> dict[str, str]:
    """Replace every foldable chain feeding a Conv weight or bias by one initializer, in place.

    Returns {folded tensor: new initializer name}. The folded value is computed by onnx-graphsurgeon's
    ``fold_constants`` (ONNX Runtime) on a model made of the chain alone, so a big model is never copied; the
    Conv inputs are rewired to the new initializer and the chain nodes nobody else reads are removed.
    """
    bypass_identity_chains(model)
    index = GraphIndex(model.graph)
    targets: list[str] = []
    chain: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        for name in node.input[1:3]:
            plain = name in index.initializers and name not in index.overridable  # no need to decode it
            if name and name not in targets and not plain and not index.is_constant(name):
                nodes: set[str] = set()
                if _constant_chain(name, index, nodes):
                    targets.append(name)
                    chain |= nodes
    if not targets:
        return {}
    values = _fold(model, index, chain, targets)
    taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output} | \
        {v.name for v in model.graph.input}
    folded: dict[str, str] = {}
    for tensor, value in values.items():
        name = f"{tensor}.folded"
        while name in taken:
            name += "_"
        taken.add(name)
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        folded[tensor] = name
    for node in model.graph.node:
        if node.op_type == "Conv":
            for position in (1, 2):
                if position < len(node.input) and node.input[position] in folded:
                    node.input[position] = folded[node.input[position]]
    remove_unused(model)
    for tensor, name in folded.items():
        LOGGER.info("folded the constant chain of conv input '%s' into initializer '%s'", tensor, name)
    return folded


def _fold(model: onnx.ModelProto, index: GraphIndex, chain: set[str], targets: list[str]) -> dict[str, object]:
    """The values of ``targets``, computed by graphsurgeon's folder on a model of the ``chain`` nodes only.

    onnx-graphsurgeon is imported here, not at module level: prune imports this module on every run, and the
    GPU check machine (bench/gpu/run_all.sh) has no onnx-graphsurgeon; only a model with a chain to fold needs it.
    """
    import onnx_graphsurgeon as gs
    nodes = sorted((index.node(name) for name in chain), key=lambda n: index.node_position[n.name])
    read = {name for node in nodes for name in node.input}
    sub = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "weight_chains", [], [onnx.helper.make_empty_tensor_value_info(t)
                                                              for t in targets],
                               [t for t in model.graph.initializer if t.name in read]),
        opset_imports=list(model.opset_import))
    sub.ir_version = max(model.ir_version, 4)  # initializers that are not graph inputs need IR >= 4
    graph = gs.import_onnx(sub)
    previous = gs.logger.G_LOGGER.severity
    gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL  # its console log would go to stdout
    try:
        graph.fold_constants(error_ok=True)
    finally:
        gs.logger.G_LOGGER.severity = previous
    return {tensor.name: tensor.values for tensor in graph.outputs if isinstance(tensor, gs.Constant)}


def bypass_identity_chains(model: onnx.ModelProto) -> None:
    """Point every Conv weight/bias read through Identity nodes at the initializer itself, in place.

    Why: PyTorch's exporter deduplicates equal initializers and reads the copies through ``Identity`` (often the
    biases: a freshly initialised net has all-zero ones), and the rewrite and onnx2torch need the constant
    itself. Identity is exact, so only the wiring changes; Identity nodes nobody reads any more are removed.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    initializers = {t.name for t in model.graph.initializer}
    overridable = {v.name for v in model.graph.input}
    changed = False
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        for position in (1, 2):
            if position >= len(node.input):
                continue
            source = node.input[position]
            while source in producer and producer[source].op_type == "Identity" and producer[source].input:
                source = producer[source].input[0]
            if source != node.input[position] and source in initializers and source not in overridable:
                node.input[position] = source
                changed = True
    if changed:
        remove_unused(model)
