"""Read-only index over an ONNX graph: who produces and who consumes each tensor, and constant values.

Analysis walks the graph many times; building the maps once keeps every walk O(edges). Constants are resolved
through the chains exporters leave in front of weights (Identity, Cast, DequantizeLinear, Constant nodes), so a
weight counts as "an initializer" whenever it can be folded to one.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from deprune_onnx.errors import DepruneError

FOLDABLE_OPS = ("Identity", "Cast", "DequantizeLinear", "Constant")


def node_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """Attributes of a node as Python values (ints, floats, lists, strings decoded, tensors as numpy)."""
    values: dict[str, Any] = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        values[attribute.name] = value
    return values


def ensure_unique_node_names(model: onnx.ModelProto) -> int:
    """Give every unnamed or duplicate-named node a deterministic unique name (``<op>_<index>``).

    Layers are identified by node name in plans and reports, so names must be unique. Returns how many nodes
    were renamed. Named, unique nodes keep their names.
    """
    seen: set[str] = set()
    taken = {node.name for node in model.graph.node}
    renamed = 0
    for index, node in enumerate(model.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        candidate = f"{node.op_type}_{index}"
        while candidate in taken or candidate in seen:
            candidate += "_"
        node.name = candidate
        seen.add(candidate)
        taken.add(candidate)
        renamed += 1
    return renamed


def subgraphs(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    """The (attribute name, graph) pairs of ``node``'s subgraphs: If branches, Loop and Scan bodies."""
    found = []
    for attribute in node.attribute:
        if attribute.HasField("g"):
            found.append((attribute.name, attribute.g))
        found.extend((attribute.name, graph) for graph in attribute.graphs)
    return found


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Every tensor name read inside ``node``'s subgraphs (If/Loop/Scan bodies, nested ones included); the
    outer-scope ones among them are implicit inputs of ``node``."""
    names: set[str] = set()
    for _, graph in subgraphs(node):
        for inner in graph.node:
            names.update(name for name in inner.input if name)
            names |= subgraph_inputs(inner)
    return names


def check_graph(model: onnx.ModelProto, source: str = "model") -> onnx.ModelProto:
    """Refuse graphs that are not single-assignment or that loop; put an unsorted graph in topological order.

    Every analysis here assumes one producer per tensor and a DAG. Duplicate producers, duplicate initializers,
    an initializer shadowing a node output and cycles are one DepruneError line naming the tensor or node.
    A graph that is merely out of order (ONNX requires topological order, ONNX Runtime tolerates it) is sorted
    in place, stably, so a sorted graph keeps its node order exactly. Returns ``model``.
    """
    graph = model.graph
    producer: dict[str, str] = {}
    for tensor in graph.initializer:
        if tensor.name in producer:
            raise DepruneError(f"{source}: initializer '{tensor.name}' is defined twice")
        producer[tensor.name] = "an initializer"
    for value in graph.input:
        producer.setdefault(value.name, "a graph input")
    for node in graph.node:
        for name in node.output:
            if not name:
                continue
            if name in producer:
                raise DepruneError(f"{source}: tensor '{name}' is produced by {producer[name]} and by node "
                                   f"'{node.name or node.op_type}' (ONNX tensors have one producer)")
            producer[name] = f"node '{node.name or node.op_type}'"
    order = _topological_order(graph)
    if order is None:
        raise DepruneError(f"{source}: the graph has a cycle (a node depends on its own output)")
    if order != list(range(len(graph.node))):
        nodes = [onnx.NodeProto() for _ in order]
        for new, old in zip(nodes, order):
            new.CopyFrom(graph.node[old])
        del graph.node[:]
        graph.node.extend(nodes)
    return model


def _topological_order(graph: onnx.GraphProto) -> list[int] | None:
    """Node indices in a topological order that keeps the original order wherever it is already valid
    (Kahn's algorithm with the smallest ready index first); None when the graph has a cycle."""
    made_by = {name: position for position, node in enumerate(graph.node) for name in node.output if name}
    dependants: dict[int, list[int]] = defaultdict(list)
    waiting = [0] * len(graph.node)
    for position, node in enumerate(graph.node):
        needs = {made_by[name] for name in set(node.input) | subgraph_inputs(node) if name in made_by}
        for other in needs:
            dependants[other].append(position)
        waiting[position] = len(needs)
    ready = [position for position, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        position = heapq.heappop(ready)
        order.append(position)
        for other in dependants[position]:
            waiting[other] -= 1
            if waiting[other] == 0:
                heapq.heappush(ready, other)
    return order if len(order) == len(graph.node) else None


class GraphIndex:
    """Producer/consumer maps and constant folding for one (top-level) graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.node_position: dict[str, int] = {}
        for position, node in enumerate(graph.node):
            self.node_position[node.name] = position
            for output in node.output:
                if output:
                    self.producer[output] = node
            # A tensor read inside an If/Loop/Scan body (outer-scope reference) is used by that node: rewriting
            # it in place would change what the body computes.
            # (Explicit inputs count once per occurrence, as the walks in analysis expect.)
            for name in [*node.input, *sorted(subgraph_inputs(node) - set(node.input))]:
                if name:
                    self.consumers[name].append(node)
        self.graph_inputs = {v.name for v in graph.input} - set(self.initializers)
        # Initializers that are also graph inputs can be overridden at run time, so they are not constants.
        self.overridable = {v.name for v in graph.input if v.name in self.initializers}
        self.graph_outputs = {v.name for v in graph.output}
        self._constant_cache: dict[str, np.ndarray | None] = {}

    def node(self, name: str) -> onnx.NodeProto:
        return self.graph.node[self.node_position[name]]

    def is_constant(self, tensor: str) -> bool:
        return self.constant(tensor) is not None

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of ``tensor`` if it folds to a constant (initializer or foldable chain), else None."""
        if tensor in self.initializers and tensor not in self.overridable:
            # Not cached: decoding is one copy, and caching every weight would hold a second copy of the model.
            return numpy_helper.to_array(self.initializers[tensor])
        if tensor in self._constant_cache:
            return self._constant_cache[tensor]
        value = self._fold(tensor, depth=0)
        self._constant_cache[tensor] = value
        return value

    def not_constant_reason(self, tensor: str) -> str:
        """Why ``tensor`` does not fold to a constant, naming what blocks it: a graph input, an initializer a
        caller can override, or else the op that cannot be folded (for skip reasons; when ``constant`` is None).
        """
        blockers: list[str] = []
        seen: set[str] = set()

        def visit(name: str, path: tuple[str, ...]) -> str | None:
            if name in seen or len(path) > 64:
                return None
            seen.add(name)
            via = f" (through {', '.join(path)})" if path else ""
            if name in self.overridable:
                return (f"initializer '{name}'{via} is also a graph input, so a caller can override it at run "
                        "time (ONNX IR >= 4); prune --drop-initializer-inputs makes it a constant")
            node = self.producer.get(name)
            if node is None:
                return f"'{tensor}' depends on graph input '{name}'{via}, computed at run time"
            variable = [n for n in [*node.input, *sorted(subgraph_inputs(node))] if n and not self.is_constant(n)]
            if not variable:
                blockers.append(f"'{tensor}' comes from {node.op_type} node '{node.name}'{via}, which cannot be "
                                "folded")
            for source in variable:
                found = visit(source, (*path, f"{node.op_type} '{node.name}'"))
                if found:
                    return found
            return None

        return visit(tensor, ()) or (blockers[0] if blockers else f"'{tensor}' is not a constant")

    def _fold(self, tensor: str, depth: int) -> np.ndarray | None:
        if not tensor:
            return None
        if tensor in self.initializers and tensor not in self.overridable:
            return numpy_helper.to_array(self.initializers[tensor])
        node = self.producer.get(tensor)
        if node is None or node.op_type not in FOLDABLE_OPS or depth > 8:
            return None
        if node.op_type == "Constant":
            attrs = node_attributes(node)
            if "value" in attrs:
                return np.asarray(attrs["value"])
            for key in ("value_float", "value_int"):
                if key in attrs:
                    return np.asarray(attrs[key])
            for key in ("value_floats", "value_ints"):
                if key in attrs:
                    return np.asarray(attrs[key])
            return None
        source = self._fold(node.input[0], depth + 1)
        if source is None:
            return None
        if node.op_type == "Identity":
            return source
        if node.op_type == "Cast":
            target = onnx.helper.tensor_dtype_to_np_dtype(node_attributes(node)["to"])
            return source.astype(target)
        return self._dequantize(node, source, depth)

    def _dequantize(self, node: onnx.NodeProto, source: np.ndarray, depth: int) -> np.ndarray | None:
        scale = self._fold(node.input[1], depth + 1) if len(node.input) > 1 else None
        if scale is None:
            return None
        zero_point = self._fold(node.input[2], depth + 1) if len(node.input) > 2 and node.input[2] else None
        axis = node_attributes(node).get("axis", 1)
        shape = [1] * source.ndim
        if scale.ndim == 1 and source.ndim > 0:
            shape[axis] = -1
        centred = source.astype(np.float32)
        if zero_point is not None:
            centred = centred - zero_point.astype(np.float32).reshape(shape)
        return (centred * scale.astype(np.float32).reshape(shape)).astype(scale.dtype)

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The single consumer of ``tensor``, or None if it has several or is a graph output."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.graph_outputs:
            return None
        return users[0]


def remove_unused(model: onnx.ModelProto) -> int:
    """Drop nodes whose outputs nobody uses and initializers nobody reads; returns how many items went.

    Needed after a weight is replaced: its old Identity/Cast/DequantizeLinear chain is left dangling.
    """
    graph = model.graph
    graph_outputs = {v.name for v in graph.output}
    removed = 0
    while True:
        used = _used_names(graph) | graph_outputs
        dead = [i for i, node in enumerate(graph.node)
                if not any(output in used for output in node.output if output)]
        if not dead:
            break
        for position in reversed(dead):
            del graph.node[position]
        removed += len(dead)
    used = _used_names(graph) | graph_outputs
    graph_inputs = {v.name for v in graph.input}
    keep = [t for t in graph.initializer if t.name in used or t.name in graph_inputs]
    removed += len(graph.initializer) - len(keep)
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return removed


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Names the nodes of ``graph`` read, outer-scope reads inside their subgraphs included."""
    return {name for node in graph.node for name in [*node.input, *subgraph_inputs(node)]}
