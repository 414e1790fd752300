"""Run a model piece by piece over a fixed set of inputs, keeping only what later pieces need.

Calibration refits DW layers in graph order and must see each layer's input as computed by the model with the
earlier layers already refit. Re-running the whole model for every layer costs (number of DW layers) forward
passes; running it in pieces costs one. ``advance(targets)`` builds a sub-model of the not-yet-run nodes that
``targets`` depend on, reading the model's initializers as they are at that moment (so weights written since the
last piece are used), runs it in ONNX Runtime and keeps the tensors that the rest of the graph still reads.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from deprune_onnx.errors import DepruneError
from deprune_onnx.evaluation.runner import make_session


class StagedForward:
    """Piecewise forward pass of ``model`` (a live reference: weight changes are picked up) over ``inputs``."""

    def __init__(self, model: onnx.ModelProto, inputs: dict[str, np.ndarray], chunk: int = 16) -> None:
        self._model = model
        self._values: dict[str, np.ndarray] = dict(inputs)
        self._done = np.zeros(len(model.graph.node), dtype=bool)
        self._producer = {out: i for i, node in enumerate(model.graph.node) for out in node.output if out}
        self._graph_outputs = {v.name for v in model.graph.output}
        self.samples = len(next(iter(inputs.values())))
        self.chunk = max(1, chunk)

    def _needed(self, targets: list[str], initializers: set[str]) -> list[int]:
        needed: set[int] = set()
        stack = [t for t in targets if t not in self._values]
        while stack:
            tensor = stack.pop()
            position = self._producer.get(tensor)
            if position is None:
                if tensor not in initializers:
                    raise DepruneError(f"tensor '{tensor}' has no producer and no value")
                continue
            if self._done[position] or position in needed:
                continue
            needed.add(position)
            stack.extend(t for t in self._model.graph.node[position].input
                         if t and t not in self._values and t not in initializers)
        return sorted(needed)

    def advance(self, targets: list[str]) -> dict[str, np.ndarray]:
        """Values of ``targets`` ([N, ...] each), running whatever part of the graph is still needed."""
        graph = self._model.graph
        initializers = {t.name: t for t in graph.initializer}
        positions = self._needed(targets, set(initializers))
        if positions:
            self._run_segment(positions, targets, initializers)
        result = {t: self._values[t] for t in targets}
        self._forget_unused()
        return result

    def _run_segment(self, positions: list[int], targets: list[str],
                     initializers: dict[str, onnx.TensorProto]) -> None:
        graph = self._model.graph
        produced = {out for i in positions for out in graph.node[i].output if out}
        self._done[positions] = True
        still_read = {t for i, node in enumerate(graph.node) if not self._done[i] for t in node.input}
        outputs = [t for t in dict.fromkeys(list(targets) + sorted(produced))
                   if t in produced and (t in targets or t in still_read or t in self._graph_outputs)]
        runner = _SegmentRunner(self._model, positions, outputs, initializers, self._values, set())
        self._values.update(runner.run(self._values, {}, self))

    def _forget_unused(self) -> None:
        graph = self._model.graph
        still_read = {t for i, node in enumerate(graph.node) if not self._done[i] for t in node.input}
        for name in [t for t in self._values if t not in still_read and t not in self._graph_outputs]:
            del self._values[name]

    def branch(self, targets: list[str], fed_initializers: list[str]) -> "Branch":
        """The rest of the graph up to ``targets``, from the current state, with ``fed_initializers`` turned into
        inputs: run it with different values for them (a layer's candidate weights) without changing the state."""
        initializers = {t.name: t for t in self._model.graph.initializer}
        positions = self._needed(targets, set(initializers))
        return Branch(self, _SegmentRunner(self._model, positions, targets, initializers, self._values,
                                           set(fed_initializers)))


class _SegmentRunner:
    """One ORT session of a set of nodes: inputs are the values it reads (and any initializers to be fed)."""

    def __init__(self, model: onnx.ModelProto, positions: list[int], outputs: list[str],
                 initializers: dict[str, onnx.TensorProto], values: dict[str, np.ndarray], fed: set[str]) -> None:
        nodes = [model.graph.node[i] for i in positions]
        produced = {out for node in nodes for out in node.output if out}
        read = list(dict.fromkeys(t for node in nodes for t in node.input if t))
        self.feeds = [t for t in read if t not in produced and (t not in initializers or t in fed)]
        self.outputs = outputs
        inputs = []
        for name in self.feeds:
            if name in fed:
                tensor = initializers[name]
                inputs.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
            else:
                inputs.append(helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(values[name].dtype), ["batch", *values[name].shape[1:]]))
        segment = helper.make_graph(nodes, "segment", inputs, [onnx.ValueInfoProto(name=t) for t in outputs],
                                    [initializers[t] for t in read if t in initializers and t not in fed])
        segment_model = helper.make_model(segment, opset_imports=model.opset_import, ir_version=model.ir_version)
        segment_model.functions.extend(model.functions)
        self.session = make_session(segment_model)

    def run(self, values: dict[str, np.ndarray], fed: dict[str, np.ndarray], owner: StagedForward,
            rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Outputs over all samples (or only the sample indices ``rows``, in that order), ``owner.chunk`` samples
        per call (falling back to 1 for batch-1 graphs)."""
        pieces: dict[str, list[np.ndarray]] = {t: [] for t in self.outputs}
        order = np.arange(owner.samples) if rows is None else np.asarray(rows)
        start = 0
        while start < len(order):
            stop = min(start + owner.chunk, len(order))
            picked = order[start:stop]
            feeds = {t: fed[t] if t in fed else values[t][picked] for t in self.feeds}
            try:
                results = self.session.run(self.outputs, feeds)
            except Exception as exc:  # a graph that hard-codes batch 1 (Reshape to [1, -1]): one sample at a time
                if owner.chunk == 1:
                    raise DepruneError(f"ONNX Runtime failed on a calibration segment ({type(exc).__name__}: "
                                       f"{' '.join(str(exc).split())})") from None
                owner.chunk = 1
                continue
            for name, value in zip(self.outputs, results):
                pieces[name].append(value)
            start = stop
        return {t: np.concatenate(v) for t, v in pieces.items()}


class Branch:
    """A reusable run of the rest of the graph from a StagedForward's current state (see ``branch``)."""

    def __init__(self, owner: StagedForward, runner: _SegmentRunner) -> None:
        self._owner = owner
        self._runner = runner

    def run(self, fed: dict[str, np.ndarray], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The targets with ``fed`` values, over all samples or only the sample indices ``rows``."""
        return self._runner.run(self._owner._values, fed, self._owner, rows)

