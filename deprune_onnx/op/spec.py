"""Names and defaults of the DRSparseDepthwiseConv op, as written in its PluginConfig YAML.

The one place the Python side defines them: the sub-GEMM width (paper section 3.1, Diagonal-wise
Refactorization: G = ceil(C/32) sub-GEMMs of 32 channels), the GPU tile T along K (section 3.3, HSR), the
custom-op domain/name/version and the custom-node detector; dw/, op/, evaluation/ and trt/ import them from
here. Tests parse the YAML and check these constants against it (tests/test_op_spec.py), and the C++ plugin's
names and defaults against it too (tests/test_plugin_host.py), so neither side can drift from the spec.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

OP_TYPE = "DRSparseDepthwiseConv"
DOMAIN = "deprune"
OPSET_VERSION = 1
PLUGIN_NAMESPACE = "deprune"
PLUGIN_VERSION = "1"

# Channels per DR sub-GEMM (the paper's 32) and the GPU tile T along K that HSR aligns to.
SUBGEMM_CHANNELS = 32
K_TILE = 32

ACTIVATIONS = ("none", "relu", "clip", "hard_swish", "silu")

# Attributes with a default in the spec, and that default. The node builder always writes every attribute
# (explicit beats implicit for a reader of the model), and the reader falls back to these when one is absent.
ATTRIBUTE_DEFAULTS: dict[str, object] = {
    "plugin_namespace": PLUGIN_NAMESPACE,
    "plugin_version": PLUGIN_VERSION,
    "depth_multiplier": 1,
    "strides": (1, 1),
    "pads": (0, 0, 0, 0),
    "dilations": (1, 1),
    "subgemm_channels": SUBGEMM_CHANNELS,
    "k_tile": K_TILE,
    "activation": "none",
    "activation_params": (),
}

# Attributes without a default: the geometry and the four packed tensors of pack_dr_weights.
REQUIRED_ATTRIBUTES: tuple[str, ...] = ("channels", "kernel_shape", "kept_counts", "tap_indices", "tap_values",
                                        "bias")

# Number of activation_params each activation takes.
ACTIVATION_PARAM_COUNTS: dict[str, int] = {"none": 0, "relu": 0, "clip": 2, "hard_swish": 2, "silu": 0}

MAX_KERNEL_SIZE = 15

# The spec's `tolerances`: max relative error (max |y - ref| / max |ref|) an implementation may show per dtype.
MAX_RELATIVE_ERROR: dict[str, float] = {"float32": 1.0e-5, "float16": 1.0e-2}


def is_custom_op(op_type: str, domain: str) -> bool:
    """True for the DRSparseDepthwiseConv op of the deprune domain (an ONNX NodeProto's ``op_type``/``domain``,
    or an onnx-graphsurgeon node's ``op``/``domain``)."""
    return op_type == OP_TYPE and domain == DOMAIN


def is_custom_node(node: "onnx.NodeProto") -> bool:
    """True when ``node`` is a DRSparseDepthwiseConv node."""
    return is_custom_op(node.op_type, node.domain)


def custom_nodes(model: "onnx.ModelProto") -> list["onnx.NodeProto"]:
    """The DRSparseDepthwiseConv nodes of ``model``'s main graph, in graph order."""
    return [node for node in model.graph.node if is_custom_node(node)]
