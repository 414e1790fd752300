"""Small ONNX graphs built in code for the PW pruning tests, plus the shared checks.

Why a helper module: every coupling case (residual, SE, Concat, Split/Slice, classifier, unsupported consumer)
builds a few convs and runs the same checks: the pruned model is valid, runs in ONNX Runtime, and pruning
channels whose filters were planted as zeros changes no output.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deprune_onnx.onnx_io.graph import GraphIndex
from support.op_testing import random_feeds, run_ort as run
from deprune_onnx.pw import PWPlan, apply_pw_plan, build_dependency_graph, plan_pw_pruning
from deprune_onnx.pw.plan import PWGroupPlan


class GraphBuilder:
    """Appends nodes and random initializers; ``model()`` wraps them into an opset-13 model."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        name = self.name(op)
        names = [f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, **attrs))
        return names[0] if outputs == 1 else names

    def conv(self, x: str, c_in: int, c_out: int, kernel: int = 1, group: int = 1, bias: bool = True) -> str:
        weight = self.rng.standard_normal((c_out, c_in // group, kernel, kernel)).astype(np.float32) * 0.5
        inputs = [x, self.const(weight, "w")]
        if bias:
            inputs.append(self.const(self.rng.standard_normal(c_out).astype(np.float32) * 0.1, "b"))
        return self.node("Conv", inputs, kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4, group=group)

    def dw(self, x: str, channels: int) -> str:
        return self.conv(x, channels, channels, kernel=3, group=channels)

    def bn(self, x: str, channels: int) -> str:
        gamma = self.rng.uniform(0.5, 2.0, channels).astype(np.float32)
        beta = self.rng.standard_normal(channels).astype(np.float32) * 0.1
        mean = self.rng.standard_normal(channels).astype(np.float32) * 0.1
        var = self.rng.uniform(0.5, 2.0, channels).astype(np.float32)
        return self.node("BatchNormalization", [x] + [self.const(v, "bn") for v in (gamma, beta, mean, var)])

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def hardswish(self, x: str) -> str:
        """The decomposed form exporters emit: x * clip(x + 3, 0, 6) / 6, with scalar constants."""
        three, zero, six = (self.const(np.array(v, np.float32)) for v in (3.0, 0.0, 6.0))
        shifted = self.node("Add", [x, three])
        clipped = self.node("Clip", [shifted, zero, six])
        return self.node("Div", [self.node("Mul", [x, clipped]), six])

    def model(self, x: str, shape: list[int], outputs: list[str], opset: int = 13) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "pw_test", [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)  # types the outputs; value_info is dropped again
        del model.graph.value_info[:]
        onnx.checker.check_model(model, full_check=True)
        return model


def plant_zero_channels(model: onnx.ModelProto, plan: PWPlan) -> onnx.ModelProto:
    """A copy where every planned channel is exactly zero wherever it is created or carried.

    Producers' filters and biases are zeroed (Conv rows, DW rows and biases), BN maps them to 0 (beta = mean = 0),
    and per-channel additive constants are zeroed; activations of these networks map 0 to 0, so the channels
    removed by the plan reach every reader as zeros and removing them must not change any output.
    """
    planted = onnx.ModelProto()
    planted.CopyFrom(model)
    graph = build_dependency_graph(planted)
    by_key = {group.member_key(): group for group in graph.groups}
    index = GraphIndex(planted.graph)
    initializers = {t.name: t for t in planted.graph.initializer}

    def zero(name: str, positions: np.ndarray, axis: int) -> None:
        value = numpy_helper.to_array(initializers[name]).copy()
        if value.ndim > axis and value.shape[axis] > 1:
            index_tuple = [slice(None)] * value.ndim
            index_tuple[axis] = positions
            value[tuple(index_tuple)] = 0
            initializers[name].CopyFrom(numpy_helper.from_array(value, name))

    for entry in plan.groups:
        group = by_key[entry.member_key()]
        for member in group.members:
            positions = member.offset + np.asarray(entry.removed, dtype=np.int64)
            node = index.producer.get(member.tensor)
            if node is None:
                continue
            if node.op_type == "Conv":
                for name in node.input[1:3]:
                    zero(name, positions, 0)
            elif node.op_type == "BatchNormalization":
                zero(node.input[2], positions, 0)
                zero(node.input[3], positions, 0)
            elif node.op_type in ("Add", "Sub"):
                rank = 4
                for name in node.input:
                    if name in initializers:
                        value = numpy_helper.to_array(initializers[name])
                        if value.ndim and value.size > 1:
                            zero(name, positions, 1 - (rank - value.ndim))
    return planted


def assert_exact_pruning(model: onnx.ModelProto, *, ratio: float, align: int, scope: str,
                         atol: float = 1e-5, full_check: bool = True) -> tuple[PWPlan, onnx.ModelProto]:
    """Plan, plant zeros at the planned channels, re-plan (must pick the same channels), prune, compare."""
    plan = plan_pw_pruning(model, ratio=ratio, align=align, scope=scope)
    assert plan.groups, "nothing planned: the test graph does not exercise pruning"
    planted = plant_zero_channels(model, plan)
    replanned = plan_pw_pruning(planted, ratio=ratio, align=align, scope=scope)
    assert [g.removed for g in replanned.groups] == [g.removed for g in plan.groups]
    pruned, _ = apply_pw_plan(planted, replanned)
    onnx.checker.check_model(pruned, full_check=full_check)
    feeds = random_feeds(model)
    for expected, got in zip(run(planted, feeds), run(pruned, feeds)):
        assert expected.shape == got.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol * max(1.0, float(np.abs(expected).max())))
    return replanned, pruned


def weight(model: onnx.ModelProto, node_name: str, input_index: int = 1) -> np.ndarray:
    index = GraphIndex(model.graph)
    return index.constant(index.node(node_name).input[input_index])


def sized_plan(groups: list[tuple[list[tuple[str, int, int]], int, list[int]]]) -> PWPlan:
    """A hand-written plan: (members as (tensor, offset, channels), group size, removed indices) per group."""
    plan = PWPlan(ratio=0.5, align=1, scope="all")
    for i, (group, size, drop) in enumerate(groups):
        plan.groups.append(PWGroupPlan(
            id=f"hand{i}", producers=[], readers=[], members=[{"tensor": t, "offset": o, "channels": c}
                                                               for t, o, c in group],
            channels=size, kept=size - len(drop), removed=drop, target_ratio=0.5, ratio=len(drop) / size,
            aligned=True, importance="l2"))
    return plan
