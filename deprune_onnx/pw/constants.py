"""Rewrite constant node inputs (weights, biases, shape targets) without disturbing other users.

A weight initializer may be shared by several nodes, be a graph output, or sit behind an Identity/Cast chain.
Rewriting it in place would silently change the other users, so an input gets a fresh initializer unless this
node input is its only use. Chains and initializers left without users are removed at the end, so the pruned
model carries no dead weights.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from deprune_onnx.onnx_io.graph import FOLDABLE_OPS


class ConstantWriter:
    """Replace ``node.input[i]`` by a constant array, in place when that input is the initializer's only use."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.uses: Counter[str] = Counter(name for node in graph.node for name in node.input if name)
        self.uses.update(value.name for value in graph.output)
        self.uses.update(value.name for value in graph.input)
        self.taken = set(self.initializers) | {out for node in graph.node for out in node.output}
        self.touched: set[str] = set()

    def write(self, node: onnx.NodeProto, input_index: int, value: np.ndarray) -> None:
        """Set input ``input_index`` (appended when the node has fewer inputs or it is empty) to ``value``."""
        while len(node.input) <= input_index:
            node.input.append("")
        name = node.input[input_index]
        if name in self.initializers and self.uses[name] == 1:
            self.initializers[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))
            return
        fresh = f"{name}_pruned" if name else f"{node.output[0]}_input{input_index}"
        while fresh in self.taken:
            fresh += "_"
        self.taken.add(fresh)
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), fresh)
        self.graph.initializer.append(tensor)
        self.initializers[fresh] = self.graph.initializer[-1]
        self.uses[fresh] += 1
        if name:
            self.uses[name] -= 1
            self.touched.add(name)
        node.input[input_index] = fresh

    def drop_unused(self) -> None:
        """Remove constant chains (Identity/Cast/Constant/DequantizeLinear) and initializers nobody reads now."""
        pending = set(self.touched)
        while pending:
            name = pending.pop()
            if self.uses[name] > 0:
                continue
            producers = [n for n in self.graph.node if name in n.output and n.op_type in FOLDABLE_OPS]
            for node in producers:
                self.graph.node.remove(node)
                for source in node.input:
                    if source:
                        self.uses[source] -= 1
                        pending.add(source)
            if name in self.initializers:
                self.graph.initializer.remove(self.initializers.pop(name))
