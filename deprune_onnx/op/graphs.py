"""onnx-graphsurgeon helpers shared by the rewrite and lower passes.

Why: ``gs.export_onnx`` rebuilds the ModelProto from the graph and drops model-level fields it does not model
(metadata_props such as class labels, doc_string, model_version, domain). A pass must not lose them, and must
import the ``deprune`` domain exactly when the graph uses the custom op.
"""
from __future__ import annotations

from collections.abc import Callable, Collection

import onnx
import onnx_graphsurgeon as gs

from deprune_onnx.op import spec
from deprune_onnx.onnx_io.proto_stream import tensor_nbytes


def uses_custom_op(graph: gs.Graph) -> bool:
    return any(spec.is_custom_op(node.op, node.domain) for node in graph.nodes)


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


# Initializers at least this big travel through an in-place rewrite as data-less stubs.
STUB_BYTES = 1 << 20


def stubbed_copy(model: onnx.ModelProto, keep: Collection[str]) -> onnx.ModelProto:
    """A copy of ``model``'s opsets and graph in which every initializer of STUB_BYTES or more that is not in
    ``keep`` is a data-less stub (name, type, dims). Graph surgery on it costs kilobytes, not the model size."""
    copy = onnx.ModelProto(ir_version=model.ir_version)
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)  # shape inference and graphsurgeon need the model-local functions
    graph, target = model.graph, copy.graph
    target.name = graph.name
    for field in ("node", "input", "output", "value_info"):
        getattr(target, field).extend(getattr(graph, field))
    for tensor in graph.initializer:
        if tensor.name in keep or tensor_nbytes(tensor) < STUB_BYTES:
            target.initializer.append(tensor)
        else:
            target.initializer.append(onnx.TensorProto(name=tensor.name, data_type=tensor.data_type,
                                                       dims=tensor.dims))
    return copy


def adopt_structure(model: onnx.ModelProto, rewritten: onnx.ModelProto) -> onnx.ModelProto:
    """Give ``model`` the nodes, I/O, value_info and opsets of ``rewritten`` (made from its stubbed_copy):
    initializers ``rewritten`` no longer uses are deleted, new ones added, and the big ones stay where they
    are, never copied."""
    graph = model.graph
    for field in ("node", "input", "output", "value_info"):
        del getattr(graph, field)[:]
        getattr(graph, field).extend(getattr(rewritten.graph, field))
    del model.opset_import[:]
    model.opset_import.extend(rewritten.opset_import)
    wanted = {tensor.name for tensor in rewritten.graph.initializer}
    for position in reversed(range(len(graph.initializer))):
        if graph.initializer[position].name not in wanted:
            del graph.initializer[position]
    present = {tensor.name for tensor in graph.initializer}
    graph.initializer.extend(t for t in rewritten.graph.initializer if t.name not in present)
    return model
