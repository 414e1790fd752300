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
