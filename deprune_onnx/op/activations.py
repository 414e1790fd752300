"""The activations DRSparseDepthwiseConv can fuse: their numpy definition and their standard-ONNX lowering.

Definitions follow the op's PluginConfig YAML (``activation`` / ``activation_params``):
  none: y = x;  relu: max(x, 0);  clip [min, max]: min(max(x, min), max);
  hard_swish [alpha, beta]: x * max(0, min(1, alpha*x + beta));  silu: x * sigmoid(x).
Matching them in a graph is the job of ``fusion``; this module only computes and emits them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # graphsurgeon only for the lowering: apply_activation runs where it is not installed (GPU check)
    import onnx_graphsurgeon as gs

# ONNX HardSwish is HardSigmoid(alpha=1/6, beta=0.5) times x; kept in float32 because ONNX float attributes are.
HARD_SWISH_PARAMS = (float(np.float32(1.0 / 6.0)), 0.5)
HARD_SWISH_MIN_OPSET = 14


def apply_activation(y: np.ndarray, activation: str, params: Sequence[float]) -> np.ndarray:
    """Apply a fused activation to ``y`` (any float dtype; computed in that dtype)."""
    if activation == "none":
        return y
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "clip":
        return np.clip(y, params[0], params[1])
    if activation == "hard_swish":
        alpha, beta = (np.asarray(v, dtype=y.dtype) for v in params)
        return y * np.clip(alpha * y + beta, 0, 1)
    if activation == "silu":
        return y / (1 + np.exp(-y))
    raise ValueError(f"unknown activation '{activation}'")


def lower_activation(x: gs.Variable, y: gs.Variable, activation: str, params: Sequence[float], *,
                     dtype: np.dtype, name: str, opset: int, fresh: Callable[[str], str]) -> list[gs.Node]:
    """Standard ONNX nodes computing ``y = activation(x)``; ``fresh`` returns an unused tensor/node name.

    ``activation`` must not be "none" (the caller then writes the conv straight into ``y``). hard_swish with
    ONNX's own parameters becomes one HardSwish node where the opset has it (>= 14), otherwise HardSigmoid + Mul.
    """
    import onnx_graphsurgeon as gs  # noqa: PLC0415 - see the TYPE_CHECKING import above

    if activation == "relu":
        return [gs.Node("Relu", name=fresh(f"{name}/Relu"), inputs=[x], outputs=[y])]
    if activation == "clip":
        bounds = [gs.Constant(fresh(f"{name}/clip_{side}"), np.asarray(value, dtype=dtype))
                  for side, value in zip(("min", "max"), params)]
        return [gs.Node("Clip", name=fresh(f"{name}/Clip"), inputs=[x, *bounds], outputs=[y])]
    if activation == "hard_swish":
        alpha, beta = params
        if (alpha, beta) == HARD_SWISH_PARAMS and opset >= HARD_SWISH_MIN_OPSET:
            return [gs.Node("HardSwish", name=fresh(f"{name}/HardSwish"), inputs=[x], outputs=[y])]
        gate = gs.Variable(fresh(f"{name}/hard_sigmoid"), dtype=dtype)
        return [gs.Node("HardSigmoid", name=fresh(f"{name}/HardSigmoid"), attrs={"alpha": alpha, "beta": beta},
                        inputs=[x], outputs=[gate]),
                gs.Node("Mul", name=fresh(f"{name}/Mul"), inputs=[x, gate], outputs=[y])]
    if activation == "silu":
        gate = gs.Variable(fresh(f"{name}/sigmoid"), dtype=dtype)
        return [gs.Node("Sigmoid", name=fresh(f"{name}/Sigmoid"), inputs=[x], outputs=[gate]),
                gs.Node("Mul", name=fresh(f"{name}/Mul"), inputs=[x, gate], outputs=[y])]
    raise ValueError(f"no lowering for activation '{activation}'")
