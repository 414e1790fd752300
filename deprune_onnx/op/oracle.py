"""numpy oracle of DRSparseDepthwiseConv that computes straight from the packed DR attributes.

It never rebuilds the dense weight: like the GPU kernel, it walks the kept taps. Taps are grouped by kernel
position (ky, kx); for one position every kept tap reads the same shifted window of the padded input, so all
its channels are one vectorised multiply-add. The only Python loop is over the <= kh*kw kernel positions.
Accumulation is in float64 and the result is cast to the input dtype, so the oracle is a reference that is at
least as exact as any implementation it checks.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.shapes import conv_output_size
from deprune_onnx.op.activations import apply_activation
from deprune_onnx.op.attributes import decode_attributes, kept_slot_mask


def run_dr_sparse_dwconv(x: np.ndarray, node_attrs: Mapping[str, Any]) -> np.ndarray:
    """Y = act(Conv(X, W_masked, B, group=channels, ...)) for X [N, C, H, W] float32/float16.

    ``node_attrs`` maps attribute names to values as ``onnx_io.graph.node_attributes`` or graphsurgeon give them.
    """
    params, packed = decode_attributes(node_attrs)
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != params.channels:
        raise DepruneError(f"DRSparseDepthwiseConv: input shape {list(x.shape)} is not [N, {params.channels}, H, W]")
    (kh, kw), (sh, sw), (dh, dw) = params.kernel_shape, params.strides, params.dilations
    top, left, bottom, right = params.pads
    n, _, h, w = x.shape
    h_out = conv_output_size(h, top, bottom, kh, sh, dh)
    w_out = conv_output_size(w, left, right, kw, sw, dw)
    if h_out < 1 or w_out < 1:
        raise DepruneError(f"DRSparseDepthwiseConv: input {h}x{w} is too small for the kernel and pads")

    kept = kept_slot_mask(packed.kept_counts, params.k_tile)
    taps = packed.tap_indices[kept].astype(np.int64)
    values = packed.tap_values[kept].astype(np.float64)
    out_channel, position = np.divmod(taps, params.taps_per_channel)
    in_channel = out_channel // params.depth_multiplier

    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    y = np.zeros((n, params.out_channels, h_out, w_out), dtype=np.float64)
    for pos in np.unique(position):
        ky, kx = divmod(int(pos), kw)
        at = position == pos  # one tap per output channel at most, so the fancy-index += below never collides
        window = padded[:, in_channel[at], ky * dh: ky * dh + sh * (h_out - 1) + 1: sh,
                        kx * dw: kx * dw + sw * (w_out - 1) + 1: sw]
        y[:, out_channel[at]] += values[at][None, :, None, None] * window
    y += packed.bias.astype(np.float64)[None, :, None, None]
    with np.errstate(over="ignore"):  # silu's exp(-y) overflows to inf for very negative y, giving the exact -0
        return apply_activation(y, params.activation, params.activation_params).astype(x.dtype)
