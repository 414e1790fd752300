"""Find the depthwise (DW) and pointwise (PW) convolutions of a model and the DSConv blocks they form.

A DW layer is a ``Conv`` with ``group == C_in`` (C_in >= 2) and weight ``[m*C_in, 1, kh, kw]``; a PW layer is a
2-D ``Conv`` with a 1x1 kernel and ``group == 1``. A 1x1 conv that works on a globally pooled tensor is the
squeeze-excitation (SE) part of a block, not a PW layer. Convs whose weight cannot be folded to a constant, or
with attributes we do not handle, are listed as skipped with the reason; they are never an error.

A DSConv block is PW-conv1 (expansion) -> DW -> [SE] -> PW-conv2 (projection) [-> residual Add], found by walking
from the DW conv through the element-wise activations exporters emit (Relu, Clip, HardSwish, decomposed
hard-swish, SiLU, ...), where every branch that leaves the main path must join it again (an SE gate or an
activation's ``x * f(x)``). Inspect -> validate -> mutate: nothing here changes the model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.graph import GraphIndex, node_attributes, subgraphs
from deprune_onnx.op.spec import SUBGEMM_CHANNELS
from deprune_onnx.progress import progress
from deprune_onnx.onnx_io.shapes import Shape, concrete, conv_output_size, infer_tensor_shapes

# Ops a block's main path may pass through: element-wise, shape-preserving per channel.
ELEMENTWISE_OPS = frozenset({
    "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Softplus",
    "Gelu", "Mish", "Identity", "BatchNormalization", "Mul", "Div", "Add", "Sub", "PRelu", "Swish",
})
# Ops an SE branch may contain between the pooled tensor and the gate.
SE_BRANCH_OPS = ELEMENTWISE_OPS | {"GlobalAveragePool", "ReduceMean", "Conv", "Reshape", "Flatten", "Squeeze",
                                   "Unsqueeze", "Gemm", "MatMul"}
_WALK_LIMIT = 40


@dataclass
class ConvLayer:
    """One DW or PW conv, with what the report and the pruners need to know about it."""

    name: str
    kind: str  # "dw" or "pw"
    input: str
    output: str
    weight: str  # the tensor feeding the weight input (an initializer, or the end of a foldable chain)
    weight_is_initializer: bool
    bias: str | None
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    depth_multiplier: int
    subgemms: int
    params: int
    macs: int | None
    sparsity: float
    input_shape: Shape | None
    output_shape: Shape | None
    block: int | None = None
    spatial_dims: int = 2  # 1 for a 1-D DW conv, described here as its 1xk 2-D view (shapes with H = 1)


@dataclass
class SkippedLayer:
    name: str
    op_type: str
    reason: str


@dataclass
class DSConvBlock:
    """PW-conv1 -> DW -> [SE] -> PW-conv2 [-> residual Add]; names are node names (None when absent)."""

    index: int
    dw: str
    expand_pw: str | None
    project_pw: str | None
    se_convs: list[str] = field(default_factory=list)
    residual_add: str | None = None


@dataclass
class ModelAnalysis:
    dw_layers: list[ConvLayer]
    pw_layers: list[ConvLayer]
    se_convs: list[str]
    blocks: list[DSConvBlock]
    skipped: list[SkippedLayer]

    def dw_by_name(self) -> dict[str, ConvLayer]:
        return {layer.name: layer for layer in self.dw_layers}

    def to_dict(self) -> dict[str, Any]:
        return {
            "dw_layers": [asdict(layer) for layer in self.dw_layers],
            "pw_layers": [asdict(layer) for layer in self.pw_layers],
            "se_convs": list(self.se_convs),
            "blocks": [asdict(block) for block in self.blocks],
            "skipped": [asdict(layer) for layer in self.skipped],
        }


def _pair(values: Any, default: int) -> tuple[int, int]:
    if values is None:
        return (default, default)
    values = list(values)
    return (int(values[0]), int(values[1]))


def resolve_pads(attrs: dict[str, Any], input_shape: tuple[int, ...] | None, kernel: tuple[int, int],
                 strides: tuple[int, int], dilations: tuple[int, int]) -> tuple[int, int, int, int] | str:
    """Explicit [top, left, bottom, right] pads of a 2-D conv (auto_pad SAME_UPPER/SAME_LOWER resolved as ONNX
    defines them: total d*(k-1) at stride 1, else from ceil(size/stride)), or a reason string when they cannot
    be known (a strided SAME conv whose input spatial size is not static)."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = attrs.get("pads", [0, 0, 0, 0])
        return (int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3]))
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    if input_shape is None and strides != (1, 1):
        return f"auto_pad={auto_pad} with stride {strides[0]}x{strides[1]} and unknown input spatial size"
    begin, end = [], []
    for axis in range(2):
        if strides[axis] == 1:  # total padding d*(k-1), whatever the input size
            total = dilations[axis] * (kernel[axis] - 1)
        else:
            size = input_shape[2 + axis]  # type: ignore[index]
            out = math.ceil(size / strides[axis])
            total = max(0, (out - 1) * strides[axis] + dilations[axis] * (kernel[axis] - 1) + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return (begin[0], begin[1], end[0], end[1])


def conv_output_hw(in_hw: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
                   pads: tuple[int, int, int, int], dilations: tuple[int, int]) -> tuple[int, int]:
    """Standard convolution output size (floor mode) of both spatial axes."""
    return tuple(  # type: ignore[return-value]
        conv_output_size(in_hw[a], pads[a], pads[a + 2], kernel[a], strides[a], dilations[a]) for a in range(2))


def as_2d_conv(attrs: dict[str, Any], weight_shape: tuple, input_shape: Shape | None
               ) -> tuple[dict[str, Any], tuple, Shape | None]:
    """A 1-D conv's attributes, weight shape [C_out, C_in/g, k] and input shape [N, C, L] as those of the
    equivalent 2-D conv with H = 1: kernel 1xk, strides/dilations (1, s), pads (0, begin, 0, end), input
    [N, C, 1, L]. auto_pad SAME_* stays: with a kernel of 1 it pads nothing along H."""
    converted = dict(attrs)
    for name in ("strides", "dilations"):
        if name in attrs:
            converted[name] = [1, int(attrs[name][0])]
    if "kernel_shape" in attrs:
        converted["kernel_shape"] = [1, int(attrs["kernel_shape"][0])]
    if "pads" in attrs:
        converted["pads"] = [0, int(attrs["pads"][0]), 0, int(attrs["pads"][1])]
    shape_2d = (*weight_shape[:2], 1, weight_shape[2])
    if input_shape is not None and len(input_shape) == 3:
        input_shape = (*input_shape[:2], 1, input_shape[2])
    return converted, shape_2d, input_shape


def check_conv(node: onnx.NodeProto, weight_shape: Shape, input_shape: Shape | None,
               bias_shape: Shape | None) -> None:
    """Refuse a Conv that contradicts itself (ONNX Runtime would refuse to run it): weight rank vs input rank,
    output channels vs group, input channels vs group * weight dim 1, kernel_shape vs the weight, lengths of
    strides/dilations/pads, bias length. Unknown dims are not checked. Raises DepruneError naming the node."""
    attrs = node_attributes(node)
    where = f"Conv node '{node.name}'"
    spatial = len(weight_shape) - 2
    if spatial < 1:
        raise DepruneError(f"{where}: weight '{node.input[1]}' has shape {list(weight_shape)} (rank < 3)")
    if input_shape is not None and len(input_shape) != len(weight_shape):
        raise DepruneError(f"{where}: input of rank {len(input_shape)} but weight of rank {len(weight_shape)}")
    group = int(attrs.get("group", 1))
    c_out, c_in_per_group = weight_shape[0], weight_shape[1]
    if group < 1 or (isinstance(c_out, int) and c_out % group):
        raise DepruneError(f"{where}: weight has {c_out} output channels, not a multiple of group {group}")
    c_in = input_shape[1] if input_shape is not None else None
    if isinstance(c_in, int) and isinstance(c_in_per_group, int) and c_in != group * c_in_per_group:
        raise DepruneError(f"{where}: group {group} x weight dim 1 ({c_in_per_group}) = "
                           f"{group * c_in_per_group} input channels, but input '{node.input[0]}' has {c_in}")
    kernel = attrs.get("kernel_shape")
    if kernel is not None and list(kernel) != list(weight_shape[2:]) and \
            all(isinstance(d, int) for d in weight_shape[2:]):
        raise DepruneError(f"{where}: kernel_shape {list(kernel)} differs from the weight's {list(weight_shape[2:])}")
    for name, expected in (("strides", spatial), ("dilations", spatial), ("pads", 2 * spatial)):
        values = attrs.get(name)
        if values is not None and len(values) != expected:
            raise DepruneError(f"{where}: {name} has {len(values)} values, a {spatial}-D conv needs {expected}")
    if bias_shape is not None and isinstance(c_out, int) and list(bias_shape) != [c_out] and \
            all(isinstance(d, int) for d in bias_shape):
        raise DepruneError(f"{where}: bias '{node.input[2]}' has shape {list(bias_shape)}, expected [{c_out}]")


def _classify_conv(node: onnx.NodeProto, index: GraphIndex, shapes: dict[str, Shape]
                   ) -> ConvLayer | SkippedLayer | None:
    """A ConvLayer for DW/PW convs, a SkippedLayer with the reason, or None for other (ordinary) convs.

    Raises DepruneError for a Conv that contradicts itself (``check_conv``)."""
    attrs = node_attributes(node)
    weight_name = node.input[1] if len(node.input) > 1 else ""
    weight_shape = shapes.get(weight_name)
    weight = index.constant(weight_name)
    if weight is not None:
        weight_shape = weight.shape
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    bias_value = index.constant(bias_name) if bias_name else None
    bias_shape = bias_value.shape if bias_value is not None else shapes.get(bias_name) if bias_name else None
    if weight_shape is not None:
        check_conv(node, tuple(weight_shape), shapes.get(node.input[0]), bias_shape)
    group = int(attrs.get("group", 1))
    input_shape = shapes.get(node.input[0])
    one_d = weight_shape is not None and len(weight_shape) == 3 and (
        (weight_shape[1] == 1 and group >= 2) or (group == 1 and weight_shape[2] == 1))
    if one_d:  # a 1-D DW or PW conv is the 1xk case of a 2-D one: H = 1, every 2-D attribute gets its H entry
        attrs, weight_shape, input_shape = as_2d_conv(attrs, tuple(weight_shape), input_shape)
    if weight_shape is None or len(weight_shape) != 4 or not all(isinstance(d, int) for d in weight_shape):
        if weight_shape is not None and len(weight_shape) != 4:
            return None  # 3-D conv, or a 1-D conv that is not depthwise: not a DSConv layer, nothing to say
        return SkippedLayer(node.name, node.op_type, f"weight '{weight_name}' has unknown shape")
    c_out, c_in_per_group, kh, kw = (int(d) for d in weight_shape)
    c_in = group * c_in_per_group
    is_dw = c_in_per_group == 1 and group == c_in and group >= 2 and c_out % group == 0
    is_pw = group == 1 and (kh, kw) == (1, 1)
    if not (is_dw or is_pw):
        return None
    kind = "dw" if is_dw else "pw"
    if weight is None:
        return SkippedLayer(node.name, node.op_type,
                            f"{kind.upper()} weight is not a constant: {index.not_constant_reason(weight_name)}")
    if not np.issubdtype(weight.dtype, np.floating):
        return SkippedLayer(node.name, node.op_type, f"{kind.upper()} weight '{weight_name}' is {weight.dtype}")
    if weight.size and not np.all(np.isfinite(weight)):
        return SkippedLayer(node.name, node.op_type, f"{kind.upper()} weight '{weight_name}' has NaN or Inf")
    kernel = _pair(attrs.get("kernel_shape", (kh, kw)), 1)
    strides = _pair(attrs.get("strides"), 1)
    dilations = _pair(attrs.get("dilations"), 1)
    concrete_input = concrete(input_shape)
    pads = resolve_pads(attrs, concrete_input, kernel, strides, dilations)
    if isinstance(pads, str):
        return SkippedLayer(node.name, node.op_type, pads)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias_value is None:
        return SkippedLayer(node.name, node.op_type, f"bias is not a constant: {index.not_constant_reason(bias)}")
    output_shape = shapes.get(node.output[0])
    if one_d and output_shape is not None and len(output_shape) == 3:
        output_shape = (*output_shape[:2], 1, output_shape[2])
    macs = None
    if concrete_input is not None and len(concrete_input) == 4:
        out_h, out_w = conv_output_hw(concrete_input[2:], kernel, strides, pads, dilations)
        macs = int(concrete_input[0] * c_out * c_in_per_group * kh * kw * out_h * out_w)
    return ConvLayer(
        name=node.name, kind=kind, input=node.input[0], output=node.output[0], weight=weight_name,
        weight_is_initializer=weight_name in index.initializers, bias=bias, in_channels=c_in,
        out_channels=c_out, kernel=kernel, strides=strides, pads=pads, dilations=dilations,
        depth_multiplier=c_out // c_in if is_dw else 1,
        subgemms=-(-c_out // SUBGEMM_CHANNELS) if is_dw else 0,
        params=int(weight.size + (c_out if bias else 0)), macs=macs,
        sparsity=float(np.count_nonzero(weight == 0) / weight.size) if weight.size else 0.0,
        input_shape=input_shape, output_shape=output_shape, spatial_dims=1 if one_d else 2)


def _is_on_pooled_tensor(node: onnx.NodeProto, index: GraphIndex, shapes: dict[str, Shape]) -> bool:
    """True for a 1x1 conv of an SE branch: its input is 1x1 spatially or comes from a global pooling.

    A known spatial size decides alone: the walk back through input[0] cannot tell the gate Mul's operands apart
    (torchvision writes Mul(scale, x), so a projection PW after the gate would look pooled)."""
    shape = shapes.get(node.input[0])
    if shape is not None and len(shape) == 4:
        spatial = tuple(shape[2:])
        if spatial == (1, 1):
            return True
        if all(isinstance(d, int) and d > 0 for d in spatial):
            return False
    tensor = node.input[0]
    for _ in range(6):
        producer = index.producer.get(tensor)
        if producer is None or producer.op_type not in SE_BRANCH_OPS:
            return False
        if producer.op_type in ("GlobalAveragePool", "ReduceMean"):
            return True
        tensor = producer.input[0]
    return False


def _variable_inputs(node: onnx.NodeProto, index: GraphIndex) -> list[str]:
    return [name for name in node.input if name and not index.is_constant(name)]


def _walk_forward(start: str, index: GraphIndex, pw_names: set[str]
                  ) -> tuple[str | None, list[str]]:
    """From a DW output, follow the main path to the projection PW.

    Every branch that leaves the path must rejoin it (SE gate, x*f(x) activations); a node that mixes in a tensor
    from outside the region (a residual, a concat) ends the walk without a projection PW. Returns the PW node
    name (or None) and the SE convs seen on the way.
    """
    pending = {start: len(index.consumers.get(start, []))}
    region_outputs = {start}
    se_convs: list[str] = []
    visited: set[str] = set()
    for _ in range(_WALK_LIMIT):
        open_tensors = [t for t, remaining in pending.items() if remaining > 0]
        if len(open_tensors) == 1:
            tensor = open_tensors[0]
            users = index.consumers.get(tensor, [])
            if len(users) == 1 and users[0].name in pw_names and pending[tensor] == 1 and \
                    all(r == 0 for t, r in pending.items() if t != tensor):
                return users[0].name, se_convs
        candidates = [node for t in open_tensors for node in index.consumers.get(t, [])
                      if node.name not in visited]
        if not candidates or any(t in index.graph_outputs for t in open_tensors):
            return None, se_convs
        # Take the earliest node in graph order whose variable inputs are all produced inside the region.
        ready = [node for node in candidates
                 if all(name in region_outputs for name in _variable_inputs(node, index))]
        if not ready:
            return None, se_convs
        node = min(ready, key=lambda n: index.node_position[n.name])
        allowed = SE_BRANCH_OPS if len(open_tensors) > 1 or node.op_type != "Conv" else frozenset()
        if node.op_type not in allowed or (node.op_type == "Conv" and node.name in pw_names):
            return None, se_convs
        if node.op_type == "Conv":
            se_convs.append(node.name)
        visited.add(node.name)
        for name in set(_variable_inputs(node, index)):
            pending[name] -= list(node.input).count(name)
        for output in node.output:
            if output:
                pending[output] = len(index.consumers.get(output, []))
                region_outputs.add(output)
    return None, se_convs


def _walk_backward(start: str, index: GraphIndex, pw_names: set[str]) -> str | None:
    """From a DW input, go back through element-wise ops (all paths must merge) to the expansion PW."""
    frontier = {start}
    for _ in range(_WALK_LIMIT):
        if len(frontier) == 1:
            tensor = next(iter(frontier))
            producer = index.producer.get(tensor)
            if producer is not None and producer.name in pw_names:
                return producer.name
        latest = max((index.producer.get(t) for t in frontier), default=None,
                     key=lambda n: -1 if n is None else index.node_position[n.name])
        if latest is None or latest.op_type not in ELEMENTWISE_OPS:
            return None
        frontier.difference_update(latest.output)
        frontier.update(_variable_inputs(latest, index))
        if not frontier:
            return None
    return None


def _residual_add(pw_output: str, index: GraphIndex) -> str | None:
    """The Add that joins a projection PW's output with a skip connection, if any."""
    tensor = pw_output
    for _ in range(4):
        user = index.only_consumer(tensor)
        if user is None:
            return None
        if user.op_type == "Add" and len(_variable_inputs(user, index)) == 2:
            return user.name
        if user.op_type not in ("BatchNormalization", "Identity"):
            return None
        tensor = user.output[0]
    return None


def _grouped_convs(nodes: Any, where: str) -> list[SkippedLayer]:
    """Grouped (DW candidate) convs among ``nodes`` and in their subgraphs, recursively, as skipped layers."""
    found = []
    for node in nodes:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:
            found.append(SkippedLayer(node.name or f"{where}/Conv", node.op_type,
                                      f"grouped conv in {where}: convs in If/Loop/Scan bodies and model-local "
                                      "functions are not pruned"))
        for attribute, graph in subgraphs(node):
            found += _grouped_convs(graph.node, f"the {attribute} of {node.op_type} '{node.name}'")
    return found


def nested_grouped_convs(model: onnx.ModelProto) -> list[SkippedLayer]:
    """Every grouped Conv the top-level analysis does not see: in If/Loop/Scan bodies and model-local functions.

    They are listed as skipped (never changed): a body or function runs with the weights it reads, so a weight
    the top-level graph shares with them is copied before it is masked (GraphIndex counts those reads as uses).
    """
    found = []
    for node in model.graph.node:
        for attribute, graph in subgraphs(node):
            found += _grouped_convs(graph.node, f"the {attribute} of {node.op_type} '{node.name}'")
    for function in model.functions:
        found += _grouped_convs(function.node, f"model-local function '{function.domain}.{function.name}'")
    return found


def analyze(model: onnx.ModelProto, shapes: dict[str, Shape] | None = None) -> ModelAnalysis:
    """Classify every Conv of the top-level graph and group DW/PW layers into DSConv blocks."""
    index = GraphIndex(model.graph)
    shapes = infer_tensor_shapes(model) if shapes is None else shapes
    dw_layers: list[ConvLayer] = []
    pw_layers: list[ConvLayer] = []
    se_convs: list[str] = []
    skipped: list[SkippedLayer] = []
    for node in progress(model.graph.node, "analyze", unit="node"):
        if node.op_type != "Conv":
            continue
        layer = _classify_conv(node, index, shapes)
        if layer is None:
            continue
        if isinstance(layer, SkippedLayer):
            skipped.append(layer)
        elif layer.kind == "pw" and _is_on_pooled_tensor(node, index, shapes):
            se_convs.append(layer.name)
        elif layer.kind == "pw":
            pw_layers.append(layer)
        else:
            dw_layers.append(layer)

    skipped += nested_grouped_convs(model)
    pw_names = {layer.name for layer in pw_layers}
    blocks: list[DSConvBlock] = []
    for block_index, dw in enumerate(dw_layers):
        project, block_se = _walk_forward(dw.output, index, pw_names)
        expand = _walk_backward(dw.input, index, pw_names)
        residual = None
        if project is not None:
            residual = _residual_add(index.node(project).output[0], index)
        blocks.append(DSConvBlock(block_index, dw.name, expand, project, block_se, residual))
        dw.block = block_index
    by_name = {layer.name: layer for layer in pw_layers}
    for block in blocks:
        for name in (block.expand_pw, block.project_pw):
            if name is not None:
                by_name[name].block = block.index
    return ModelAnalysis(dw_layers, pw_layers, se_convs, blocks, skipped)
