"""Rewrite pass: pruned DW Conv (+ bias + following activation) -> deprune::DRSparseDepthwiseConv.

Handles: 2-D Conv with ``group == C_in`` and a constant weight [m*C_in, 1, kh, kw] (depth multiplier m >= 1),
any strides, dilations, explicit asymmetric pads, auto_pad NOTSET/VALID/SAME_UPPER/SAME_LOWER (SAME resolved to
explicit pads; at stride > 1 this needs the static input size from shape inference), kernels up to 15,
float32/float16 weights, a constant bias or none, and the activations listed in ``fusion``. A 1-D DW conv
(weight [m*C_in, 1, k]) is its 1xk case: the op runs on the input unsqueezed to [N, C, 1, L] and its output is
squeezed back. The bias is always fused; the activation only when the conv output feeds nothing else.
Refuses (the layer stays a standard Conv, with the reason in its RewriteRecord): non-constant weight or bias,
quantized (QDQ) weights, auto_pad SAME_* at stride > 1 on an input whose spatial size is not static, 3-D convs,
kernels over 15, non-float weights.
Postconditions: the model passes ``onnx.checker`` (full check), is topologically sorted, imports the
``deprune`` domain, and has no dangling node or initializer. The input model is not modified.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from deprune_onnx.analysis import as_2d_conv, resolve_pads
from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.load_save import default_opset
from deprune_onnx.onnx_io.shapes import Shape, concrete, infer_tensor_shapes
from deprune_onnx.op import spec
from deprune_onnx.op.attributes import FLOAT_DTYPES, DRConvParams, encode_attributes
from deprune_onnx.op.fusion import FusedActivation, match_activation, no_fusion_reason
from deprune_onnx.op.graphs import adopt_structure, export_like, name_factory, stubbed_copy
from deprune_onnx.op.packing import PackedDR, pack_dr_weights, subgemm_count

TENSOR_ATTRIBUTES = ("kept_counts", "tap_indices", "tap_values", "bias")


@dataclass(frozen=True)
class RewriteRecord:
    """What the rewrite did to one DW layer (JSON-ready through ``to_dict``)."""

    layer: str                 # node name of the DW Conv, kept by the custom node that replaces it
    rewritten: bool
    reason: str | None = None  # why the layer was refused (rewritten is False)
    activation: str = "none"
    activation_params: tuple[float, ...] = ()
    fused_nodes: tuple[str, ...] = ()  # the activation nodes absorbed into the custom op
    no_fusion: str | None = None  # why no activation was fused (activation "none"), for the report
    bias_fused: bool = False
    kept_taps: int = 0
    total_taps: int = 0
    packed_taps: int = 0       # kept taps plus tile padding: the length of tap_indices
    subgemms: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_dw_conv(node: gs.Node) -> bool:
    """group == C_in, judged from a constant weight [C_out, 1, ...] whose C_out is a multiple of group."""
    if node.op != "Conv" or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return False
    shape = node.inputs[1].shape
    group = int(node.attrs.get("group", 1))
    return len(shape) >= 3 and shape[1] == 1 and shape[0] % group == 0


def _behind_dequantize(tensor: gs.Tensor) -> bool:
    """True when ``tensor`` is computed by a DequantizeLinear (through Identity/Cast): a QDQ weight."""
    for _ in range(8):
        if isinstance(tensor, gs.Constant) or not tensor.inputs:
            return False
        producer = tensor.inputs[0]
        if producer.op == "DequantizeLinear":
            return True
        if producer.op not in ("Identity", "Cast") or not producer.inputs:
            return False
        tensor = producer.inputs[0]
    return False


def _geometry(node: gs.Node, shapes: Mapping[str, Shape]) -> tuple[dict[str, Any], np.ndarray, Shape | None]:
    """The conv's attributes, weight [C_out, 1, kh, kw] and input shape as a 2-D conv: a 1-D DW conv is its 1xk
    case (H = 1), the way the op runs it between an Unsqueeze and a Squeeze."""
    attrs, weight = dict(node.attrs), node.inputs[1].values
    input_shape = shapes.get(node.inputs[0].name)
    if weight.ndim == 3:
        attrs, shape_2d, input_shape = as_2d_conv(attrs, weight.shape, input_shape)
        weight = weight.reshape(shape_2d)
    return attrs, weight, input_shape


def _explicit_pads(node: gs.Node, shapes: Mapping[str, Shape]) -> tuple[int, int, int, int] | str:
    """The conv's [top, left, bottom, right] pads with auto_pad resolved, or why they cannot be known."""
    attrs, weight, input_shape = _geometry(node, shapes)
    return resolve_pads(attrs, concrete(input_shape), (int(weight.shape[2]), int(weight.shape[3])),
                        tuple(int(v) for v in attrs.get("strides", (1, 1))),  # type: ignore[arg-type]
                        tuple(int(v) for v in attrs.get("dilations", (1, 1))))  # type: ignore[arg-type]


def _refusal(node: gs.Node, shapes: Mapping[str, Shape]) -> str | None:
    """Why this node (named by the caller or found by _is_dw_conv) cannot become the op, or None."""
    if node.op != "Conv":
        return f"not a Conv ({node.op})"
    if len(node.inputs) > 1 and _behind_dequantize(node.inputs[1]):
        return "quantized weights: the op is float-only (the layer stays a QDQ Conv, for INT8 engines)"
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return "weight is not an initializer"
    if not _is_dw_conv(node):
        return "not a depthwise conv (group != C_in)"
    weight = node.inputs[1].values
    if weight.ndim not in (3, 4):
        return f"{weight.ndim - 2}-D convolution (only 1-D and 2-D are supported)"
    if weight.dtype not in FLOAT_DTYPES:
        return f"weight dtype {weight.dtype} (only float32/float16)"
    if len(node.inputs) > 2 and node.inputs[2].name and not isinstance(node.inputs[2], gs.Constant):
        return "bias is not an initializer"
    pads = _explicit_pads(node, shapes)
    if isinstance(pads, str):
        return pads
    if max(weight.shape[2:]) > spec.MAX_KERNEL_SIZE:
        return f"kernel {list(weight.shape[2:])} larger than {spec.MAX_KERNEL_SIZE}"
    return None


def _conv_params(node: gs.Node, shapes: Mapping[str, Shape], fused: FusedActivation | None,
                 subgemm_channels: int, k_tile: int) -> DRConvParams:
    attrs, weight, _ = _geometry(node, shapes)
    pads = _explicit_pads(node, shapes)
    assert not isinstance(pads, str), "_refusal checked the pads"
    channels = int(attrs.get("group", 1))
    return DRConvParams(
        channels=channels,
        kernel_shape=(int(weight.shape[2]), int(weight.shape[3])),
        depth_multiplier=weight.shape[0] // channels,
        strides=tuple(int(v) for v in attrs.get("strides", (1, 1))),
        pads=tuple(int(v) for v in pads),
        dilations=tuple(int(v) for v in attrs.get("dilations", (1, 1))),
        subgemm_channels=subgemm_channels,
        k_tile=k_tile,
        activation=fused.activation if fused else "none",
        activation_params=fused.params if fused else (),
    )


def _keep_mask(node: gs.Node, keep_masks: Mapping[str, np.ndarray] | None) -> np.ndarray:
    weight = node.inputs[1].values
    if keep_masks is None:
        return weight != 0
    mask = np.asarray(keep_masks[node.name])
    if mask.shape != weight.shape:
        raise DepruneError(f"keep mask of '{node.name}' has shape {list(mask.shape)}, "
                           f"its weight has shape {list(weight.shape)}")
    return mask.astype(bool)


def _replace(graph: gs.Graph, node: gs.Node, params: DRConvParams, packed: PackedDR,
             fused: FusedActivation | None, opset: int, fresh: Callable[[str], str]) -> None:
    """Detach the conv and the fused activation nodes, and put the custom node in their place (a 1-D conv's
    between an Unsqueeze and a Squeeze of axis 2, so the op sees [N, C, 1, L])."""
    x = node.inputs[0]
    y = fused.output if fused else node.outputs[0]
    one_d = node.inputs[1].values.ndim == 3
    for old in (node, *(fused.nodes if fused else ())):
        old.inputs.clear()
        old.outputs.clear()
    attrs = encode_attributes(params, packed)
    for field in TENSOR_ATTRIBUTES:
        attrs[field] = gs.Constant(f"{node.name}/{field}", attrs[field])
    op_input, op_output = x, y
    if one_d:
        op_input = gs.Variable(fresh(f"{node.name}/input_2d"), dtype=x.dtype)
        op_output = gs.Variable(fresh(f"{node.name}/output_2d"), dtype=y.dtype)
        for op, source, target in (("Unsqueeze", x, op_input), ("Squeeze", op_output, y)):
            if opset >= 13:  # axes became an input in opset 13
                axes = gs.Constant(fresh(f"{node.name}/{op.lower()}_axes"), np.array([2], np.int64))
                graph.nodes.append(gs.Node(op, name=fresh(f"{node.name}/{op.lower()}"), inputs=[source, axes],
                                           outputs=[target]))
            else:
                graph.nodes.append(gs.Node(op, name=fresh(f"{node.name}/{op.lower()}"), attrs={"axes": [2]},
                                           inputs=[source], outputs=[target]))
    graph.nodes.append(gs.Node(spec.OP_TYPE, name=node.name, domain=spec.DOMAIN, attrs=attrs,
                               inputs=[op_input], outputs=[op_output]))


def rewrite_to_plugin(model: onnx.ModelProto, keep_masks: Mapping[str, np.ndarray] | None = None, *,
                      k_tile: int = spec.K_TILE,
                      subgemm_channels: int = spec.SUBGEMM_CHANNELS, in_place: bool = False
                      ) -> tuple[onnx.ModelProto, list[RewriteRecord]]:
    """Replace DW convs by DRSparseDepthwiseConv; returns the new model and one record per DW layer considered.

    ``keep_masks`` maps DW Conv node names to bool masks of their weight's shape: exactly those layers are
    rewritten, keeping the masked taps (a kept weight that is exactly zero stays a kept tap, so HSR's tile
    alignment survives). Without it every DW conv is rewritten with its non-zero pattern. A name that is not a
    node of the model, or a mask of the wrong shape, is a DepruneError.

    ``in_place=True`` rewrites ``model`` itself and returns it: the surgery runs on a stubbed copy (big
    initializers other than DW weights and biases are data-less) whose structure is then adopted, so a
    multi-GB model is never copied; graphsurgeon's export would otherwise hold it three times over.
    """
    if k_tile < 1 or subgemm_channels < 1:
        raise DepruneError(f"k_tile ({k_tile}) and subgemm_channels ({subgemm_channels}) must be >= 1")
    source = stubbed_copy(model, _grouped_conv_inputs(model)) if in_place else model
    graph = gs.import_onnx(source)
    fresh = name_factory(graph)
    by_name = {node.name: node for node in graph.nodes if node.name}
    if keep_masks is not None:
        unknown = sorted(set(keep_masks) - set(by_name))
        if unknown:
            raise DepruneError(f"keep_masks names node(s) not in the model: {', '.join(unknown[:5])}")
        targets = [by_name[name] for name in keep_masks]
    else:
        targets = [node for node in graph.nodes if _is_dw_conv(node)]
    graph_outputs = {tensor.name for tensor in graph.outputs}
    # SAME_* pads at stride > 1 depend on the input size: only then is shape inference worth its cost.
    needs_shapes = any(node.attrs.get("auto_pad", "NOTSET").startswith("SAME") for node in targets)
    shapes = infer_tensor_shapes(source) if needs_shapes else {}
    opset = default_opset(source) or 0

    records = []
    for node in targets:
        if not node.name:
            node.name = fresh(spec.OP_TYPE)
        reason = _refusal(node, shapes)
        if reason is not None:
            records.append(RewriteRecord(node.name, False, reason))
            continue
        _, weight, _ = _geometry(node, shapes)
        has_bias = len(node.inputs) > 2 and bool(node.inputs[2].name)
        bias = node.inputs[2].values if has_bias else None
        fused = match_activation(node.outputs[0], graph_outputs)
        params = _conv_params(node, shapes, fused, subgemm_channels, k_tile)
        packed = pack_dr_weights(weight, bias, keep_mask=_keep_mask(node, keep_masks).reshape(weight.shape),
                                 subgemm_channels=subgemm_channels, k_tile=k_tile)
        records.append(RewriteRecord(
            layer=node.name, rewritten=True, activation=params.activation,
            activation_params=params.activation_params,
            fused_nodes=tuple(n.name for n in fused.nodes) if fused else (), bias_fused=has_bias,
            no_fusion=None if fused else no_fusion_reason(node.outputs[0], graph_outputs),
            kept_taps=int(packed.kept_counts.sum()), total_taps=int(weight.size),
            packed_taps=int(packed.tap_indices.size),
            subgemms=subgemm_count(params.out_channels, subgemm_channels)))
        _replace(graph, node, params, packed, fused, opset, fresh)
    graph.cleanup().toposort()
    rewritten = export_like(graph, source)
    if in_place:
        return adopt_structure(model, rewritten), records
    return rewritten, records


def _grouped_conv_inputs(model: onnx.ModelProto) -> set[str]:
    """Weights and biases of grouped convs (DW convs among them): the rewrite packs their values."""
    return {name for node in model.graph.node if node.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in node.attribute) for name in node.input[1:]}
