"""The packed DR layout of DRSparseDepthwiseConv (see the op's PluginConfig YAML, fields kept_counts,
tap_indices, tap_values, bias).

Diagonal-wise Refactorization groups a DW layer's output channels into sub-GEMMs of ``subgemm_channels``;
each kept weight is one K column of its sub-GEMM. We store, per sub-GEMM, the flat dense indices
(o*kh*kw + ky*kw + kx) of its kept taps in increasing order, padded with zero-value entries up to a multiple of
the GPU tile ``k_tile`` so a kernel always walks whole tiles. This is the one packer; the numpy oracle and the
C++ reader read its output.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PackedDR:
    """The four tensor fields of one DRSparseDepthwiseConv node."""

    kept_counts: np.ndarray  # int32 [G]: K_g, kept taps per sub-GEMM
    tap_indices: np.ndarray  # int32 [sum ceil(K_g/T)*T]: flat dense index of each tap (padding repeats the last)
    tap_values: np.ndarray   # float32/float16, same length: tap weights, 0 for padding
    bias: np.ndarray         # float32/float16 [C_out]


def padded_counts(kept_counts: np.ndarray, k_tile: int) -> np.ndarray:
    """ceil(K_g / T) * T for every sub-GEMM: the number of entries each sub-GEMM occupies."""
    kept_counts = np.asarray(kept_counts, dtype=np.int64)
    return -(-kept_counts // k_tile) * k_tile


def subgemm_offsets(kept_counts: np.ndarray, k_tile: int) -> np.ndarray:
    """Start of each sub-GEMM's block in tap_indices/tap_values, plus the total length at the end ([G+1])."""
    return np.concatenate([[0], np.cumsum(padded_counts(kept_counts, k_tile))]).astype(np.int64)


def subgemm_count(c_out: int, subgemm_channels: int) -> int:
    """G = ceil(C_out / subgemm_channels)."""
    return -(-c_out // subgemm_channels)


def pack_dr_weights(weight: np.ndarray, bias: np.ndarray | None = None, *, keep_mask: np.ndarray | None = None,
                    subgemm_channels: int = 32, k_tile: int = 32) -> PackedDR:
    """Pack a masked DW weight [C_out, 1, kh, kw] into the DR layout.

    ``keep_mask`` (same shape, bool) says which taps are kept; without it every non-zero weight is kept. Passing
    the mask matters when a kept weight happens to be exactly zero: the tile alignment chosen by HSR is about the
    kept count, not the non-zero count.
    """
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[1] != 1:
        raise ValueError(f"DW weight must be [C_out, 1, kh, kw], got {list(weight.shape)}")
    c_out, _, kh, kw = weight.shape
    taps_per_channel = kh * kw
    keep = (weight != 0) if keep_mask is None else np.asarray(keep_mask, dtype=bool)
    if keep.shape != weight.shape:
        raise ValueError(f"keep_mask shape {list(keep.shape)} differs from weight shape {list(weight.shape)}")
    flat_weight = weight.reshape(-1)
    kept = np.flatnonzero(keep.reshape(-1))  # increasing, hence grouped by sub-GEMM
    groups = subgemm_count(c_out, subgemm_channels)
    kept_group = kept // (subgemm_channels * taps_per_channel)
    kept_counts = np.bincount(kept_group, minlength=groups).astype(np.int64)
    offsets = subgemm_offsets(kept_counts, k_tile)
    first_kept = np.concatenate([[0], np.cumsum(kept_counts)])[:-1]

    # Every slot first points at the last kept tap of its block (value 0): that is the padding. Then the kept
    # taps overwrite the leading K_g slots of each block.
    total = int(offsets[-1])
    slot_group = np.repeat(np.arange(groups), padded_counts(kept_counts, k_tile))
    last_kept = kept[np.maximum(first_kept + kept_counts - 1, 0)] if kept.size else np.zeros(groups, np.int64)
    tap_indices = last_kept[slot_group] if total else np.zeros(0, np.int64)
    tap_values = np.zeros(total, dtype=weight.dtype)
    slots = offsets[kept_group] + (np.arange(kept.size) - first_kept[kept_group])
    tap_indices = np.array(tap_indices, dtype=np.int64)
    tap_indices[slots] = kept
    tap_values[slots] = flat_weight[kept]

    bias_out = np.zeros(c_out, dtype=weight.dtype) if bias is None else np.asarray(bias, dtype=weight.dtype)
    if bias_out.shape != (c_out,):
        raise ValueError(f"bias must have shape [{c_out}], got {list(bias_out.shape)}")
    return PackedDR(kept_counts.astype(np.int32), tap_indices.astype(np.int32), tap_values, bias_out.copy())


def unpack_dr_weights(packed: PackedDR, c_out: int, kh: int, kw: int, *, k_tile: int = 32
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild the dense masked weight [C_out, 1, kh, kw] and the bias; exact inverse of pack_dr_weights."""
    offsets = subgemm_offsets(packed.kept_counts, k_tile)
    if packed.tap_indices.shape != (offsets[-1],) or packed.tap_values.shape != (offsets[-1],):
        raise ValueError("tap_indices/tap_values length does not match kept_counts and k_tile")
    is_kept = np.zeros(int(offsets[-1]), dtype=bool)
    for start, count in zip(offsets[:-1], packed.kept_counts):
        is_kept[start:start + int(count)] = True
    weight = np.zeros(c_out * kh * kw, dtype=packed.tap_values.dtype)
    weight[packed.tap_indices[is_kept]] = packed.tap_values[is_kept]
    return weight.reshape(c_out, 1, kh, kw), packed.bias.copy()
