"""Writing and reading the attributes of a DRSparseDepthwiseConv node.

The node builder (``encode_attributes``) and the reader (``decode_attributes``) are the only places that know
attribute names, types and defaults; both follow the op's PluginConfig YAML through ``spec``. The reader
accepts the attribute values in every form they come in (plain Python/numpy values, ``onnx.TensorProto``,
onnx-graphsurgeon ``Constant``, ``bytes`` strings from ``onnx.helper.get_attribute_value``) and validates the
packed layout completely, vectorised, so the oracle and ``lower()`` can trust it and a corrupted model gives a
one-line error naming the node instead of a wrong result.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from deprune_onnx.errors import DepruneError
from deprune_onnx.op import spec
from deprune_onnx.op.packing import PackedDR, padded_counts, subgemm_count, subgemm_offsets

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass(frozen=True)
class DRConvParams:
    """Geometry and fused activation of one DRSparseDepthwiseConv node (everything but the packed tensors)."""

    channels: int
    kernel_shape: tuple[int, int]
    depth_multiplier: int = 1
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    subgemm_channels: int = spec.SUBGEMM_CHANNELS
    k_tile: int = spec.K_TILE
    activation: str = "none"
    activation_params: tuple[float, ...] = ()

    @property
    def out_channels(self) -> int:
        return self.channels * self.depth_multiplier

    @property
    def taps_per_channel(self) -> int:
        return self.kernel_shape[0] * self.kernel_shape[1]

    def validate(self) -> str | None:
        """The first violated rule of the spec, or None when the parameters are valid."""
        if self.channels < 1 or self.depth_multiplier < 1:
            return f"channels ({self.channels}) and depth_multiplier ({self.depth_multiplier}) must be >= 1"
        if len(self.kernel_shape) != 2 or not all(1 <= k <= spec.MAX_KERNEL_SIZE for k in self.kernel_shape):
            return f"kernel_shape {list(self.kernel_shape)} must be 2 values in 1..{spec.MAX_KERNEL_SIZE}"
        if len(self.strides) != 2 or min(self.strides) < 1:
            return f"strides {list(self.strides)} must be 2 values >= 1"
        if len(self.dilations) != 2 or min(self.dilations) < 1:
            return f"dilations {list(self.dilations)} must be 2 values >= 1"
        if len(self.pads) != 4 or min(self.pads) < 0:
            return f"pads {list(self.pads)} must be 4 values >= 0"
        if self.subgemm_channels < 1 or self.k_tile < 1:
            return f"subgemm_channels ({self.subgemm_channels}) and k_tile ({self.k_tile}) must be >= 1"
        if self.activation not in spec.ACTIVATION_PARAM_COUNTS:
            return f"activation '{self.activation}' is not one of {list(spec.ACTIVATIONS)}"
        expected = spec.ACTIVATION_PARAM_COUNTS[self.activation]
        if len(self.activation_params) != expected:
            return (f"activation '{self.activation}' takes {expected} activation_params, "
                    f"got {list(self.activation_params)}")
        if self.activation == "clip" and self.activation_params[0] > self.activation_params[1]:
            return f"clip activation_params {list(self.activation_params)} must be [min, max] with min <= max"
        return None


def encode_attributes(params: DRConvParams, packed: PackedDR) -> dict[str, Any]:
    """Every attribute of the node, tensors as numpy arrays (the caller wraps them for onnx or graphsurgeon).

    All attributes are written, defaults included, so the model states its parameters without the reader
    needing the spec; the one exception is an empty ``activation_params`` (its default), because an empty list
    has no ONNX attribute type to infer and a zero-length plugin field helps no reader.
    """
    problem = params.validate()
    if problem is not None:
        raise ValueError(problem)
    attrs: dict[str, Any] = {
        "plugin_namespace": spec.PLUGIN_NAMESPACE,
        "plugin_version": spec.PLUGIN_VERSION,
        "channels": int(params.channels),
        "depth_multiplier": int(params.depth_multiplier),
        "kernel_shape": [int(v) for v in params.kernel_shape],
        "strides": [int(v) for v in params.strides],
        "pads": [int(v) for v in params.pads],
        "dilations": [int(v) for v in params.dilations],
        "subgemm_channels": int(params.subgemm_channels),
        "k_tile": int(params.k_tile),
        "activation": params.activation,
        "kept_counts": np.asarray(packed.kept_counts, dtype=np.int32),
        "tap_indices": np.asarray(packed.tap_indices, dtype=np.int32),
        "tap_values": np.asarray(packed.tap_values),
        "bias": np.asarray(packed.bias),
    }
    if params.activation_params:
        attrs["activation_params"] = [float(v) for v in params.activation_params]
    return attrs


def _plain(value: Any) -> Any:
    """Strip the container types attribute values come in: TensorProto, graphsurgeon Constant, bytes."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    graphsurgeon = sys.modules.get("onnx_graphsurgeon")  # a gs.Constant exists only once gs is imported
    if graphsurgeon is not None and isinstance(value, graphsurgeon.Constant):
        return np.asarray(value.values)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def decode_attributes(attrs: Mapping[str, Any], where: str = "DRSparseDepthwiseConv node"
                      ) -> tuple[DRConvParams, PackedDR]:
    """Read and validate a node's attributes; raises DepruneError naming ``where`` on any violation of the spec."""
    values = {name: _plain(value) for name, value in attrs.items()}
    missing = [name for name in spec.REQUIRED_ATTRIBUTES if name not in values]
    if missing:
        raise DepruneError(f"{where}: missing attribute(s) {', '.join(missing)}")

    def get(name: str) -> Any:
        return values.get(name, spec.ATTRIBUTE_DEFAULTS.get(name))

    if get("plugin_namespace") != spec.PLUGIN_NAMESPACE or str(get("plugin_version")) != spec.PLUGIN_VERSION:
        raise DepruneError(f"{where}: plugin_namespace/plugin_version {get('plugin_namespace')!r}/"
                           f"{get('plugin_version')!r}, expected {spec.PLUGIN_NAMESPACE!r}/{spec.PLUGIN_VERSION!r}")
    try:
        params = DRConvParams(
            channels=int(get("channels")),
            kernel_shape=tuple(int(v) for v in get("kernel_shape")),
            depth_multiplier=int(get("depth_multiplier")),
            strides=tuple(int(v) for v in get("strides")),
            pads=tuple(int(v) for v in get("pads")),
            dilations=tuple(int(v) for v in get("dilations")),
            subgemm_channels=int(get("subgemm_channels")),
            k_tile=int(get("k_tile")),
            activation=str(get("activation")),
            activation_params=tuple(float(v) for v in get("activation_params")),
        )
    except (TypeError, ValueError) as exc:
        raise DepruneError(f"{where}: malformed attribute ({exc})") from None
    problem = params.validate()
    if problem is not None:
        raise DepruneError(f"{where}: {problem}")
    packed = PackedDR(kept_counts=np.asarray(values["kept_counts"]), tap_indices=np.asarray(values["tap_indices"]),
                      tap_values=np.asarray(values["tap_values"]), bias=np.asarray(values["bias"]))
    problem = _packed_problem(params, packed)
    if problem is not None:
        raise DepruneError(f"{where}: {problem}")
    return params, packed


def kept_slot_mask(kept_counts: np.ndarray, k_tile: int) -> np.ndarray:
    """Bool mask over the packed entries: True for kept taps, False for tile padding."""
    offsets = subgemm_offsets(kept_counts, k_tile)
    block_sizes = padded_counts(kept_counts, k_tile)
    position_in_block = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], block_sizes)
    return position_in_block < np.repeat(np.asarray(kept_counts, dtype=np.int64), block_sizes)


def _packed_problem(params: DRConvParams, packed: PackedDR) -> str | None:
    """The first way the packed tensors break the layout of the spec, or None (all checks vectorised)."""
    groups = subgemm_count(params.out_channels, params.subgemm_channels)
    counts, indices, tap_values, bias = packed.kept_counts, packed.tap_indices, packed.tap_values, packed.bias
    if counts.dtype != np.int32 or indices.dtype != np.int32:
        return f"kept_counts and tap_indices must be int32, got {counts.dtype} and {indices.dtype}"
    if tap_values.dtype not in FLOAT_DTYPES or bias.dtype != tap_values.dtype:
        return f"tap_values and bias must both be float32 or float16, got {tap_values.dtype} and {bias.dtype}"
    if counts.shape != (groups,):
        return f"kept_counts has shape {list(counts.shape)}, expected [{groups}] sub-GEMMs"
    channels_in_group = np.minimum(params.subgemm_channels,
                                   params.out_channels - params.subgemm_channels * np.arange(groups))
    capacity = channels_in_group * params.taps_per_channel
    if np.any(counts < 0) or np.any(counts > capacity):
        return "kept_counts out of range (0 <= K_g <= channels of sub-GEMM g * kh * kw)"
    total = int(subgemm_offsets(counts, params.k_tile)[-1])
    if indices.shape != (total,) or tap_values.shape != (total,):
        return (f"tap_indices/tap_values have {indices.shape[0] if indices.ndim else 0}/"
                f"{tap_values.shape[0] if tap_values.ndim else 0} entries, expected {total} "
                f"(kept_counts padded to k_tile={params.k_tile})")
    if bias.shape != (params.out_channels,):
        return f"bias has shape {list(bias.shape)}, expected [{params.out_channels}]"
    if total == 0:
        return None
    block_sizes = padded_counts(counts, params.k_tile)
    slot_group = np.repeat(np.arange(groups), block_sizes)
    taps_per_group = params.subgemm_channels * params.taps_per_channel
    first, last = slot_group * taps_per_group, slot_group * taps_per_group + capacity[slot_group]
    if np.any(indices < first) or np.any(indices >= last):
        return "tap_indices outside their sub-GEMM's channels"
    kept = kept_slot_mask(counts, params.k_tile)
    if np.any(tap_values[~kept] != 0):
        return "padding entries of tap_values must be 0"
    kept_indices, kept_groups = indices[kept].astype(np.int64), slot_group[kept]
    same_group = kept_groups[1:] == kept_groups[:-1]
    if np.any(np.diff(kept_indices)[same_group] <= 0):
        return "kept tap_indices must be strictly increasing within each sub-GEMM"
    # Padding repeats the block's last kept index: a reader may rely on it to skip a branch.
    last_kept_slot = np.maximum(subgemm_offsets(counts, params.k_tile)[:-1] + counts.astype(np.int64) - 1, 0)
    expected_padding = indices[last_kept_slot][slot_group]
    if np.any(indices[~kept] != expected_padding[~kept]):
        return "padding entries of tap_indices must repeat their block's last kept index"
    return None
