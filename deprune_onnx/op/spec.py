"""Names and defaults of the DRSparseDepthwiseConv op, as written in its PluginConfig YAML.

A test parses the YAML and checks these constants against it, so the Python side cannot drift from the spec.
"""
from __future__ import annotations

OP_TYPE = "DRSparseDepthwiseConv"
DOMAIN = "deprune"
OPSET_VERSION = 1
PLUGIN_NAMESPACE = "deprune"
PLUGIN_VERSION = "1"

DEFAULT_SUBGEMM_CHANNELS = 32
DEFAULT_K_TILE = 32

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
    "subgemm_channels": DEFAULT_SUBGEMM_CHANNELS,
    "k_tile": DEFAULT_K_TILE,
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
