"""Channel dependency groups on an ONNX graph: which tensors must lose the same channels together.

Why: a pointwise filter can only be deleted if every tensor that carries its channel (BN, activations, the
residual Add it is summed into, the SE gate it is multiplied by, the Concat it is part of, ...) drops the same
channel, and every reader of those tensors (the next conv's input channels, a Gemm's in-features) drops it too.
Inspect -> validate -> mutate (Torch-Pruning style): this module only inspects. It never changes the model.

How: every channel of every 4-D/2-D activation tensor (axis 1, NCHW / NC) is a *slot*. Each operator rule links
the slots it passes through (an activation links input channel c to output channel c; Concat links input i's
channel c to output channel offset_i + c; a depthwise conv with depth multiplier 1 passes channels straight
through). Connected slots form a *component*: one channel that must be removed everywhere at once. Components
that touch exactly the same tensors form a *group*, the unit the planner scores and prunes. A group's channels
sit at ``offset + i`` in each member tensor, so one list of group indices says what every member loses.

Rules (one per operator kind, ``_Rules``) also record the edits a removal needs (slice a weight axis, rewrite a
Split's sizes, ...), so the remover never re-derives them. Anything a rule does not understand *blocks* the
tensors it touches, with a reason: a group containing a blocked tensor is reported and left unpruned.
Handled: Conv (group 1: channels start here / are read here; depthwise with multiplier 1: pass-through),
BatchNormalization, element-wise unary ops and Clip, Add/Sub/Mul/Div/Pow/Max/Min/Sum/Mean/PRelu/Where with
per-channel constants sliced, pooling (incl. global), Pad and Resize/Upsample that leave the channel axis alone,
Concat/Split/Slice (offsets on axis 1), Flatten/Reshape/Squeeze/Unsqueeze/Reduce* that keep channels on axis 1
of a 1x1 tensor, and Gemm/MatMul reading them as in-features. Left alone on purpose: grouped convs other than
depthwise with multiplier 1, quantized (DequantizeLinear) weights, Transpose and any op that moves or mixes
channels, graph inputs and outputs (their channel count is part of the model's interface), control flow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

from deprune_onnx.onnx_io.graph import GraphIndex, node_attributes
from deprune_onnx.onnx_io.shapes import Shape, infer_tensor_shapes

CHANNEL_AXIS = 1

UNARY_OPS = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Mish", "Identity", "Cast", "Neg", "Abs", "Exp", "Sqrt", "Reciprocal", "Erf",
    "ThresholdedRelu", "Dropout", "Clip", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
    "GlobalMaxPool", "GlobalLpPool",
})
# Binary (n-ary) element-wise ops whose inputs broadcast against each other: one dependency group.
BROADCAST_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where"})
REDUCE_OPS = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
                        "ReduceProd", "ReduceLogSumExp", "ReduceSumSquare"})


@dataclass(frozen=True)
class SliceConstant:
    """Delete the removed channels of ``tensor`` from axis ``axis`` of constant input ``input_index``."""

    node: int
    input_index: int
    axis: int
    tensor: str


@dataclass(frozen=True)
class SetGroupAttribute:
    """A depthwise conv's ``group`` attribute becomes the new channel count of ``tensor``."""

    node: int
    tensor: str


@dataclass(frozen=True)
class SetShapeEntry:
    """Entry ``position`` of the 1-D int constant input ``input_index`` becomes the new channel count of ``tensor``
    (a Reshape target or Resize ``sizes``)."""

    node: int
    input_index: int
    position: int
    tensor: str


@dataclass(frozen=True)
class RewriteSplit:
    """A Split on the channel axis: its sizes become the new channel counts of its outputs."""

    node: int


@dataclass(frozen=True)
class RewriteSlice:
    """A Slice on the channel axis (step 1): its bounds are recomputed from the kept input channels."""

    node: int
    axis_position: int  # position of the channel axis in the Slice's axes list


Edit = SliceConstant | SetGroupAttribute | SetShapeEntry | RewriteSplit | RewriteSlice


@dataclass(frozen=True)
class Member:
    """One tensor of a group: the group's channel i is channel ``offset + i`` of ``tensor`` (which has
    ``channels`` channels in all)."""

    tensor: str
    offset: int
    channels: int


@dataclass
class ChannelGroup:
    """Channels that must be removed together, with who creates, carries and reads them."""

    size: int
    members: list[Member]
    origins: list[str]  # Conv nodes whose output filters create these channels
    readers: list[str]  # nodes that read them as input features (Conv in-channels, Gemm in-features)
    carriers: list[str]  # nodes they pass through (DW conv, BN, activations, Add, Concat, pooling, ...)
    reason: str | None = None  # why the group cannot be pruned; None when it can
    id: str = ""

    def member_key(self) -> tuple[tuple[str, int, int], ...]:
        return tuple(sorted((m.tensor, m.offset, m.channels) for m in self.members))


@dataclass
class DependencyGraph:
    """The groups of a model plus what the remover needs: channel counts and the edits of every rule."""

    groups: list[ChannelGroup]
    channels: dict[str, int]
    edits: list[Edit]
    origin_nodes: dict[str, int] = field(default_factory=dict)  # output tensor -> position of its origin Conv


def _normalise_axes(axes: Any, rank: int) -> list[int]:
    return sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))


class _Rules:
    """Collects slot links, blocked tensors and edits, one rule per operator kind."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, Shape]) -> None:
        self.graph = model.graph
        self.index = GraphIndex(model.graph)
        self.shapes = shapes
        self.channels: dict[str, int] = {}
        for name, shape in shapes.items():
            if (len(shape) >= 2 and isinstance(shape[CHANNEL_AXIS], int) and name not in self.index.initializers
                    and not self.index.is_constant(name)):
                self.channels[name] = int(shape[CHANNEL_AXIS])
        self.links: list[tuple[str, int, str, int, int]] = []  # (tensor a, offset a, tensor b, offset b, length)
        self.blocked: dict[str, str] = {}
        self.edits: list[Edit] = []
        self.origins: dict[str, int] = {}
        self.readers: dict[str, list[int]] = {}
        self.carriers: dict[str, list[int]] = {}

    # -- helpers -------------------------------------------------------------------------------------------
    def rank(self, tensor: str) -> int | None:
        shape = self.shapes.get(tensor)
        return None if shape is None else len(shape)

    def dims(self, tensor: str) -> Shape | None:
        return self.shapes.get(tensor)

    def link(self, node: int, a: str, b: str, offset_a: int = 0, offset_b: int = 0, length: int | None = None
             ) -> str | None:
        """Link channels of ``a`` and ``b``; a reason string when their channel counts are unknown/unequal."""
        if a not in self.channels or b not in self.channels:
            return f"channel count of '{a if a not in self.channels else b}' is unknown"
        if length is None:
            if self.channels[a] != self.channels[b]:
                return f"'{a}' and '{b}' have different channel counts"
            length = self.channels[a]
        self.links.append((a, offset_a, b, offset_b, length))
        for tensor in (a, b):
            self.carriers.setdefault(tensor, []).append(node)
        return None

    def block(self, node: onnx.NodeProto, reason: str) -> None:
        message = f"{node.op_type} '{node.name}': {reason}"
        for tensor in list(node.input) + list(node.output):
            if tensor in self.channels:
                self.blocked.setdefault(tensor, message)

    def editable_constant(self, tensor: str) -> np.ndarray | str:
        """The constant value of ``tensor``, or why it cannot be rewritten (computed, overridable, quantized)."""
        value = self.index.constant(tensor)
        if value is None:
            return f"'{tensor}' is not a constant"
        name = tensor
        while name not in self.index.initializers:
            producer = self.index.producer.get(name)
            if producer is None or producer.op_type == "Constant":
                break
            if producer.op_type == "DequantizeLinear":
                return f"'{tensor}' is quantized (DequantizeLinear); removing channels would drop the quantization"
            name = producer.input[0]
        return value

    # -- rules ---------------------------------------------------------------------------------------------
    def conv(self, position: int, node: onnx.NodeProto) -> str | None:
        weight = self.editable_constant(node.input[1])
        if isinstance(weight, str):
            return f"weight {weight}"
        if weight.ndim < 3:
            return f"weight of rank {weight.ndim}, not [C_out, C_in/group, *kernel]"
        if len(node.input) > 2 and node.input[2] and isinstance(self.editable_constant(node.input[2]), str):
            return f"bias '{node.input[2]}' is not a rewritable constant"
        x, y = node.input[0], node.output[0]
        group = int(node_attributes(node).get("group", 1))
        c_out = weight.shape[0]
        if group == 1:
            self.origins[y] = position
            self.readers.setdefault(x, []).append(position)
            self.edits.append(SliceConstant(position, 1, 0, y))
            self.edits.append(SliceConstant(position, 1, 1, x))
            if len(node.input) > 2 and node.input[2]:
                self.edits.append(SliceConstant(position, 2, 0, y))
            return None
        if weight.shape[1] == 1 and c_out == group and self.channels.get(x) == group:
            reason = self.link(position, x, y)
            if reason is None:
                self.edits.append(SliceConstant(position, 1, 0, y))
                if len(node.input) > 2 and node.input[2]:
                    self.edits.append(SliceConstant(position, 2, 0, y))
                self.edits.append(SetGroupAttribute(position, y))
            return reason
        return (f"grouped conv (group={group}, weight {list(weight.shape)}) cannot drop channels; only depthwise "
                "convs with depth multiplier 1 pass channels through")

    def batch_norm(self, position: int, node: onnx.NodeProto) -> str | None:
        if any(name for name in node.output[1:]):
            return "training-mode outputs are used"
        for i in range(1, 5):
            value = self.editable_constant(node.input[i])
            if isinstance(value, str):
                return value
            self.edits.append(SliceConstant(position, i, 0, node.output[0]))
        return self.link(position, node.input[0], node.output[0])

    def unary(self, position: int, node: onnx.NodeProto) -> str | None:
        if any(name for name in node.output[1:]):
            return "second output (mask / indices) is used"
        for name in node.input[1:]:  # Clip min/max, Dropout ratio: must be constant scalars
            if name:
                value = self.index.constant(name)
                if value is None or value.size != 1:
                    return f"input '{name}' is not a constant scalar"
        return self.link(position, node.input[0], node.output[0])

    def elementwise(self, position: int, node: onnx.NodeProto) -> str | None:
        y = node.output[0]
        if y not in self.channels:
            return f"channel count of '{y}' is unknown"
        c_out, r_out = self.channels[y], self.rank(y)
        for i, name in enumerate(node.input):
            if not name:
                continue
            constant = self.index.constant(name)
            shape = constant.shape if constant is not None else self.dims(name)
            if shape is None:
                return f"shape of '{name}' is unknown"
            axis = CHANNEL_AXIS - (r_out - len(shape))
            size = shape[axis] if 0 <= axis < len(shape) else 1
            if constant is not None:
                if size == c_out and c_out > 1:
                    value = self.editable_constant(name)
                    if isinstance(value, str):
                        return value
                    self.edits.append(SliceConstant(position, i, axis, y))
                elif size != 1:
                    return f"constant '{name}' {list(shape)} does not broadcast per channel"
            elif size == c_out:
                if len(shape) != r_out:
                    return f"operand '{name}' {list(shape)} has a lower rank than the output"
                reason = self.link(position, name, y)
                if reason:
                    return reason
            elif size != 1:
                return f"operand '{name}' has {size} channels, the output {c_out}"
        return None

    def concat(self, position: int, node: onnx.NodeProto) -> str | None:
        y = node.output[0]
        rank = self.rank(y)
        if rank is None:
            return "output rank is unknown"
        axis = int(node_attributes(node)["axis"]) % rank
        offset = 0
        for name in node.input:
            if name not in self.channels:
                return f"input '{name}' is a constant or has an unknown channel count"
            reason = self.link(position, name, y, 0, offset, self.channels[name] if axis == CHANNEL_AXIS else None)
            if reason:
                return reason
            offset += self.channels[name] if axis == CHANNEL_AXIS else 0
        return None

    def split(self, position: int, node: onnx.NodeProto) -> str | None:
        x = node.input[0]
        rank = self.rank(x)
        if rank is None or x not in self.channels:
            return "input shape is unknown"
        attrs = node_attributes(node)
        if int(attrs.get("axis", 0)) % rank != CHANNEL_AXIS:
            for output in node.output:
                reason = self.link(position, x, output)
                if reason:
                    return reason
            return None
        if len(node.input) > 1 and node.input[1] and self.index.constant(node.input[1]) is None:
            return "split sizes are computed at run time"
        offset = 0
        for output in node.output:
            if output not in self.channels:
                return f"channel count of '{output}' is unknown"
            self.link(position, output, x, 0, offset, self.channels[output])
            offset += self.channels[output]
        self.edits.append(RewriteSplit(position))
        return None

    def slice(self, position: int, node: onnx.NodeProto) -> str | None:
        x, y = node.input[0], node.output[0]
        rank = self.rank(x)
        if rank is None or x not in self.channels or y not in self.channels:
            return "input or output shape is unknown"
        if len(node.input) < 3:
            return "opset < 10 Slice (attribute bounds) is not handled"
        values = [self.index.constant(name) if name else None for name in node.input[1:5]]
        if any(value is None for value, name in zip(values, node.input[1:5]) if name):
            return "bounds are computed at run time"
        starts = values[0]
        axes = values[2] if len(values) > 2 and values[2] is not None else np.arange(len(starts))
        steps = values[3] if len(values) > 3 and values[3] is not None else np.ones(len(starts), np.int64)
        normalised = [int(a) % rank for a in axes.reshape(-1)]
        if CHANNEL_AXIS not in normalised:
            return self.link(position, x, y)
        where = normalised.index(CHANNEL_AXIS)
        if int(steps.reshape(-1)[where]) != 1:
            return "a strided Slice of the channel axis is not handled"
        size = self.channels[x]
        start = int(starts.reshape(-1)[where])
        start = min(max(start + size if start < 0 else start, 0), size)
        self.edits.append(RewriteSlice(position, where))
        return self.link(position, y, x, 0, start, self.channels[y])

    def flatten(self, position: int, node: onnx.NodeProto) -> str | None:
        dims = self.dims(node.input[0])
        axis = int(node_attributes(node).get("axis", 1))
        if dims is None or axis % len(dims) != CHANNEL_AXIS or any(d != 1 for d in dims[2:]):
            return "only a channel-major flatten of a 1x1 tensor (after global pooling) keeps channels on axis 1"
        return self.link(position, node.input[0], node.output[0])

    def reshape(self, position: int, node: onnx.NodeProto) -> str | None:
        x, y = node.input[0], node.output[0]
        before, after = self.dims(x), self.dims(y)
        target = self.index.constant(node.input[1])
        if before is None or after is None or target is None or len(after) < 2:
            return "shapes or target are unknown"
        c = self.channels.get(x)
        if (after[0] != before[0] or after[1] != c or any(d != 1 for d in before[2:])
                or any(d != 1 for d in after[2:])):
            return "only reshapes of an N x C x 1 x 1 tensor that keep C on axis 1 are handled"
        entry = int(target.reshape(-1)[CHANNEL_AXIS])
        if entry == c and c > 0:
            if isinstance(self.editable_constant(node.input[1]), str):
                return "target shape is not a rewritable constant"
            self.edits.append(SetShapeEntry(position, 1, CHANNEL_AXIS, y))
        elif entry not in (0, -1):
            return f"target shape entry {entry} on the channel axis"
        return self.link(position, x, y)

    def squeeze(self, position: int, node: onnx.NodeProto) -> str | None:
        x, y = node.input[0], node.output[0]
        axes = node_attributes(node).get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.index.constant(node.input[1])
        reference = x if node.op_type == "Squeeze" else y
        rank = self.rank(reference)
        if axes is None or rank is None or min(_normalise_axes(axes, rank), default=0) < 2:
            return "only squeezing/unsqueezing axes after the channel axis is handled"
        return self.link(position, x, y)

    def reduce(self, position: int, node: onnx.NodeProto) -> str | None:
        attrs = node_attributes(node)
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.index.constant(node.input[1])
        rank = self.rank(node.input[0])
        if axes is None or rank is None or len(np.asarray(axes).reshape(-1)) == 0:
            return "reduction axes are unknown or all axes"
        normalised = _normalise_axes(axes, rank)
        if CHANNEL_AXIS in normalised or (0 in normalised and not int(attrs.get("keepdims", 1))):
            return "reduces or moves the channel axis"
        return self.link(position, node.input[0], node.output[0])

    def pad(self, position: int, node: onnx.NodeProto) -> str | None:
        pads = node_attributes(node).get("pads")
        if pads is None and len(node.input) > 1:
            pads = self.index.constant(node.input[1])
        if len(node.input) > 3 and node.input[3]:
            return "explicit axes input is not handled"
        rank = self.rank(node.input[0])
        if pads is None or rank is None:
            return "pads are computed at run time"
        pads = np.asarray(pads).reshape(-1)
        if pads[CHANNEL_AXIS] != 0 or pads[CHANNEL_AXIS + rank] != 0:
            return "pads the channel axis"
        return self.link(position, node.input[0], node.output[0])

    def resize(self, position: int, node: onnx.NodeProto) -> str | None:
        inputs = list(node.input) + [""] * 4
        scales_name = inputs[1] if node.op_type == "Upsample" else inputs[2]
        sizes_name = "" if node.op_type == "Upsample" else inputs[3]
        if sizes_name:
            sizes = self.index.constant(sizes_name)
            if sizes is None or isinstance(self.editable_constant(sizes_name), str):
                return "sizes are not a rewritable constant"
            if int(sizes.reshape(-1)[CHANNEL_AXIS]) != self.channels.get(node.input[0]):
                return "resizes the channel axis"
            self.edits.append(SetShapeEntry(position, 3, CHANNEL_AXIS, node.output[0]))
        elif scales_name:
            scales = self.index.constant(scales_name)
            if scales is None or float(scales.reshape(-1)[CHANNEL_AXIS]) != 1.0:
                return "scales are computed at run time or scale the channel axis"
        else:
            return "neither scales nor sizes given"
        return self.link(position, node.input[0], node.output[0])

    def gemm(self, position: int, node: onnx.NodeProto) -> str | None:
        attrs = node_attributes(node)
        a = node.input[0]
        if node.op_type == "Gemm" and int(attrs.get("transA", 0)):
            return "transA=1 is not handled"
        if self.rank(a) != 2:
            return "only 2-D inputs [N, C] are read as in-features"
        weight = self.editable_constant(node.input[1])
        if isinstance(weight, str):
            return f"weight {weight}"
        if weight.ndim != 2:
            return "weight is not 2-D"
        axis = 1 if node.op_type == "Gemm" and int(attrs.get("transB", 0)) else 0
        self.readers.setdefault(a, []).append(position)
        self.edits.append(SliceConstant(position, 1, axis, a))
        return None

    def apply(self) -> None:
        table: dict[str, Callable[[int, onnx.NodeProto], str | None]] = {
            "Conv": self.conv, "BatchNormalization": self.batch_norm, "Concat": self.concat, "Split": self.split,
            "Slice": self.slice, "Flatten": self.flatten, "Reshape": self.reshape, "Squeeze": self.squeeze,
            "Unsqueeze": self.squeeze, "Pad": self.pad, "Resize": self.resize, "Upsample": self.resize,
            "Gemm": self.gemm, "MatMul": self.gemm,
        }
        table.update({op: self.unary for op in UNARY_OPS})
        table.update({op: self.elementwise for op in BROADCAST_OPS})
        table.update({op: self.reduce for op in REDUCE_OPS})
        for position, node in enumerate(self.graph.node):
            touches = [t for t in list(node.input) + list(node.output) if t in self.channels]
            if not touches:
                continue
            rule = table.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
                rule = None
            reason = rule(position, node) if rule is not None else "operator not understood by the PW pruner"
            if reason is not None:
                self.block(node, reason)
        for value in self.graph.output:
            if value.name in self.channels:
                self.blocked.setdefault(value.name, f"'{value.name}' is a graph output")
        for name in self.index.graph_inputs:
            if name in self.channels:
                self.blocked.setdefault(name, f"'{name}' is a graph input")
        for name in _subgraph_references(self.graph):
            if name in self.channels:
                self.blocked.setdefault(name, f"'{name}' is used inside a subgraph")


def _subgraph_references(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                for inner in sub.node:
                    names.update(inner.input)
                names |= _subgraph_references(sub)
    return names


def connected_components(count: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label of each of ``count`` items after linking a[k] with b[k]: the smallest item of its component.

    Vectorised union-find: hook each link's larger root to its smaller one, then pointer-jump to stars; repeat
    until every link joins one root. Converges in O(log n) rounds on chains.
    """
    parent = np.arange(count)
    while True:
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        root_a, root_b = parent[a], parent[b]
        differ = root_a != root_b
        if not differ.any():
            return parent
        low = np.minimum(root_a[differ], root_b[differ])
        high = np.maximum(root_a[differ], root_b[differ])
        np.minimum.at(parent, high, low)


def _signature_hash(tensor_ids: np.ndarray, labels: np.ndarray, tensor_count: int) -> np.ndarray:
    """A 64-bit hash per component of the set of tensors it touches (random weights summed, so order-free)."""
    weights = np.random.default_rng(0x5eed).integers(1, 2**63 - 1, size=tensor_count, dtype=np.uint64)
    pairs = np.unique(labels.astype(np.int64) * tensor_count + tensor_ids)
    signature = np.zeros(labels.size, dtype=np.uint64)
    np.add.at(signature, pairs // tensor_count, weights[pairs % tensor_count])
    return signature


def build_dependency_graph(model: onnx.ModelProto, shapes: dict[str, Shape] | None = None) -> DependencyGraph:
    """Discover every channel group of the model that starts at a Conv (one with origin filters)."""
    rules = _Rules(model, infer_tensor_shapes(model) if shapes is None else shapes)
    rules.apply()
    tensors = list(rules.channels)
    base = np.cumsum([0] + [rules.channels[t] for t in tensors])
    start = {t: int(base[i]) for i, t in enumerate(tensors)}
    tensor_of_slot = np.repeat(np.arange(len(tensors)), np.diff(base))
    if rules.links:
        a = np.concatenate([start[ta] + oa + np.arange(n) for ta, oa, _, _, n in rules.links])
        b = np.concatenate([start[tb] + ob + np.arange(n) for _, _, tb, ob, n in rules.links])
    else:
        a = b = np.zeros(0, dtype=np.int64)
    labels = connected_components(int(base[-1]), a, b)
    signature = _signature_hash(tensor_of_slot, labels, len(tensors))[labels]

    groups: dict[int, list[tuple[str, np.ndarray]]] = {}
    for i, tensor in enumerate(tensors):
        slots = signature[base[i]:base[i + 1]]
        for value in np.unique(slots):
            groups.setdefault(int(value), []).append((tensor, np.flatnonzero(slots == value)))
    found = [_describe(rules, base, labels, start, entries) for entries in groups.values()
             if any(tensor in rules.origins for tensor, _ in entries)]
    found.sort(key=lambda g: min(rules.origins[m.tensor] for m in g.members if m.tensor in rules.origins))
    for number, group in enumerate(found):
        group.id = f"g{number}"
    return DependencyGraph(found, dict(rules.channels), rules.edits, dict(rules.origins))


def _describe(rules: _Rules, base: np.ndarray, labels: np.ndarray, start: dict[str, int],
              entries: list[tuple[str, np.ndarray]]) -> ChannelGroup:
    """Turn the slots of one group into members with offsets; check each member holds it contiguously."""
    graph = rules.graph
    first_tensor, first_positions = entries[0]
    order = labels[start[first_tensor] + first_positions]  # component labels in group index order
    members: list[Member] = []
    reason = None
    for tensor, positions in entries:
        member_labels = labels[start[tensor] + positions]
        if np.unique(member_labels).size != member_labels.size or member_labels.size != order.size:
            reason = reason or f"a channel of '{tensor}' is coupled to another channel of the same tensor"
            members.append(Member(tensor, int(positions[0]), rules.channels[tensor]))
        else:
            sorter = np.argsort(member_labels)
            placed = positions[sorter][np.searchsorted(member_labels[sorter], order)]
            if not np.array_equal(placed, placed[0] + np.arange(placed.size)):
                reason = reason or f"the channels of '{tensor}' are permuted or not contiguous"
            members.append(Member(tensor, int(placed[0]), rules.channels[tensor]))
        if tensor in rules.blocked:
            reason = reason or rules.blocked[tensor]
    tensors = {m.tensor for m in members}
    origins = sorted({rules.origins[t] for t in tensors if t in rules.origins})
    readers = sorted({p for t in tensors for p in rules.readers.get(t, [])})
    carriers = sorted({p for t in tensors for p in rules.carriers.get(t, [])})
    return ChannelGroup(
        size=int(order.size), members=members, origins=[graph.node[p].name for p in origins],
        readers=[graph.node[p].name for p in readers], carriers=[graph.node[p].name for p in carriers],
        reason=reason)
