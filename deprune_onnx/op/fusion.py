"""Find the activation that directly follows a DW conv, so the rewrite can fuse it into the custom op.

Handled (``x`` is the conv output; every intermediate tensor must feed only the pattern and not be a graph
output, and ``x`` itself must have no consumer outside the pattern):
  Relu(x)                                   -> relu
  Clip(x, min, max), constant bounds        -> clip [min, max] (Relu6 = [0, 6]; a missing bound is +-inf)
  HardSwish(x)                              -> hard_swish [1/6, 0.5]
  Mul(x, HardSigmoid(x; alpha, beta))       -> hard_swish [alpha, beta]
  Mul(x, Sigmoid(x))                        -> silu
  Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)     -> hard_swish [1/6, 0.5] (PaddlePaddle's decomposed hard-swish,
                                               also with Mul(..., 1/6) in place of the Div)
Deliberately left alone: activations after a consumer that is not an activation (BatchNorm, Add), PRelu and
LeakyRelu (not in the op's spec), and any pattern whose constants are not constants. The conv is then still
rewritten, with activation "none", and the activation stays a standard node.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from deprune_onnx.op.activations import HARD_SWISH_PARAMS


@dataclass(frozen=True)
class FusedActivation:
    """A matched activation: what the op computes, which tensor it must produce, and the nodes it replaces."""

    activation: str
    params: tuple[float, ...]
    output: gs.Variable
    nodes: tuple[gs.Node, ...]


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor: an initializer or the output of a Constant node; None otherwise."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def _scalar(tensor: gs.Tensor) -> float | None:
    value = constant_value(tensor)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _only_consumer(tensor: gs.Tensor, graph_outputs: Collection[str]) -> gs.Node | None:
    """The single node reading ``tensor``, or None when it has several readers or is a graph output."""
    if tensor.name in graph_outputs or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def _is_product_of(node: gs.Node, a: gs.Tensor, b: gs.Tensor) -> bool:
    return node.op == "Mul" and len(node.inputs) == 2 and {id(t) for t in node.inputs} == {id(a), id(b)}


def _clip(node: gs.Node) -> tuple[float, float] | None:
    """Constant [min, max] of a Clip node (opset >= 11: bounds are inputs, possibly omitted)."""
    bounds = [-np.inf, np.inf]
    for position in (1, 2):
        if len(node.inputs) > position and node.inputs[position].name:
            value = _scalar(node.inputs[position])
            if value is None:
                return None
            bounds[position - 1] = value
    return bounds[0], bounds[1]


def _single(x: gs.Variable, node: gs.Node) -> FusedActivation | None:
    if node.op == "Relu":
        return FusedActivation("relu", (), node.outputs[0], (node,))
    if node.op == "Clip":
        bounds = _clip(node)
        return None if bounds is None else FusedActivation("clip", bounds, node.outputs[0], (node,))
    if node.op == "HardSwish":
        return FusedActivation("hard_swish", HARD_SWISH_PARAMS, node.outputs[0], (node,))
    return None


def _gated(x: gs.Variable, gate: gs.Node, mul: gs.Node, graph_outputs: Collection[str]) -> FusedActivation | None:
    """Mul(x, HardSigmoid(x)) or Mul(x, Sigmoid(x))."""
    if _only_consumer(gate.outputs[0], graph_outputs) is not mul or not _is_product_of(mul, x, gate.outputs[0]):
        return None
    if gate.op == "HardSigmoid":
        alpha = float(np.float32(gate.attrs.get("alpha", 0.2)))
        beta = float(np.float32(gate.attrs.get("beta", 0.5)))
        return FusedActivation("hard_swish", (alpha, beta), mul.outputs[0], (gate, mul))
    if gate.op == "Sigmoid":
        return FusedActivation("silu", (), mul.outputs[0], (gate, mul))
    return None


def _decomposed_hard_swish(x: gs.Variable, add: gs.Node, mul: gs.Node,
                           graph_outputs: Collection[str]) -> FusedActivation | None:
    """Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6), as exported by PaddlePaddle (e.g. the ppocr MobileNetV3)."""
    if add.op != "Add" or len(add.inputs) != 2 or mul.op != "Mul":
        return None
    other = add.inputs[1] if add.inputs[0] is x else add.inputs[0]
    if _scalar(other) != 3.0:
        return None
    clip = _only_consumer(add.outputs[0], graph_outputs)
    if clip is None or clip.op != "Clip" or _clip(clip) != (0.0, 6.0):
        return None
    if _only_consumer(clip.outputs[0], graph_outputs) is not mul or not _is_product_of(mul, x, clip.outputs[0]):
        return None
    scale = _only_consumer(mul.outputs[0], graph_outputs)
    if scale is None or len(scale.inputs) != 2:
        return None
    if scale.op == "Div" and scale.inputs[0] is mul.outputs[0] and _scalar(scale.inputs[1]) == 6.0:
        return FusedActivation("hard_swish", HARD_SWISH_PARAMS, scale.outputs[0], (add, clip, mul, scale))
    if scale.op == "Mul":
        other = scale.inputs[1] if scale.inputs[0] is mul.outputs[0] else scale.inputs[0]
        factor = _scalar(other)
        if factor is not None and np.float32(factor) == np.float32(1.0 / 6.0):
            return FusedActivation("hard_swish", HARD_SWISH_PARAMS, scale.outputs[0], (add, clip, mul, scale))
    return None


def match_activation(x: gs.Variable, graph_outputs: Collection[str]) -> FusedActivation | None:
    """The fusable activation reading the conv output ``x``, or None (see the module docstring for patterns)."""
    if x.name in graph_outputs:
        return None
    consumers = list(x.outputs)
    if len(consumers) == 1:
        return _single(x, consumers[0])
    if len(consumers) != 2:
        return None
    by_op = {node.op: node for node in consumers}
    if "Mul" not in by_op or len(by_op) != 2:
        return None
    mul = by_op.pop("Mul")
    other = next(iter(by_op.values()))
    if other.op in ("HardSigmoid", "Sigmoid"):
        return _gated(x, other, mul, graph_outputs)
    return _decomposed_hard_swish(x, other, mul, graph_outputs)


# Activations that ONNX has and the op's spec does not (docs/op.md): not fused, said so.
_NOT_IN_SPEC = frozenset({"LeakyRelu", "PRelu", "Elu", "Selu", "Tanh", "Softplus", "Gelu", "Mish"})


def no_fusion_reason(x: gs.Variable, graph_outputs: Collection[str]) -> str:
    """Why ``match_activation(x)`` found nothing to fuse, as one phrase for the report (e.g. "output feeds Add
    'blocks.1/Add': not an activation, nothing to fuse"). Only meaningful when match_activation returned None."""
    if x.name in graph_outputs:
        return "output is a graph output: nothing may be fused into it"
    consumers = list(x.outputs)
    if not consumers:
        return "output is read by no node"
    named = ", ".join(f"{node.op} '{node.name}'" for node in consumers[:3]) + (", ..." if len(consumers) > 3 else "")
    if len(consumers) == 1:
        op = consumers[0].op
        if op in _NOT_IN_SPEC:
            return f"output feeds {named}: an activation the op does not implement"
        if op == "Clip":
            return f"output feeds {named}: its bounds are not constants"
        return f"output feeds {named}: not an activation, nothing to fuse"
    return (f"output feeds {len(consumers)} nodes ({named}): an activation is fused only when the conv output feeds "
            "nothing else, or in x*HardSigmoid(x), x*Sigmoid(x) and the decomposed hard-swish")
