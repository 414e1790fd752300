"""onnx-graphsurgeon helpers shared by the rewrite and lower passes.

Why: ``gs.export_onnx`` rebuilds the ModelProto from the graph and drops model-level fields it does not model
(metadata_props such as class labels, doc_string, model_version, domain). A pass must not lose them, and must
import the ``deprune`` domain exactly when the graph uses the custom op.
"""
from __future__ import annotations

from collections.abc import Callable

import onnx
import onnx_graphsurgeon as gs

from deprune_onnx.op import spec


def uses_custom_op(graph: gs.Graph) -> bool:
    return any(node.op == spec.OP_TYPE and node.domain == spec.DOMAIN for node in graph.nodes)


def model_uses_custom_op(model: onnx.ModelProto) -> bool:
    return any(node.op_type == spec.OP_TYPE and node.domain == spec.DOMAIN for node in model.graph.node)


def export_like(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` with the model-level fields of ``template``; import ``deprune`` iff the op is used."""
    opsets = [onnx.helper.make_opsetid(entry.domain, entry.version) for entry in template.opset_import
              if entry.domain != spec.DOMAIN]
    if uses_custom_op(graph):
        opsets.append(onnx.helper.make_opsetid(spec.DOMAIN, spec.OPSET_VERSION))
    model = gs.export_onnx(graph, opset_imports=opsets)
    model.ir_version = template.ir_version
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(template, field))
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    return model


def name_factory(graph: gs.Graph) -> Callable[[str], str]:
    """A function returning names unused by any tensor or node of ``graph`` (and by its own earlier results)."""
    taken = set(graph.tensors().keys()) | {node.name for node in graph.nodes}

    def fresh(base: str) -> str:
        name, suffix = base, 0
        while name in taken:
            suffix += 1
            name = f"{base}_{suffix}"
        taken.add(name)
        return name

    return fresh
