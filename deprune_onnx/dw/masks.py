"""DEPrune masks for depthwise convolutions: DCP, BWT and HSR (the paper's three steps; README.md, "What `prune`
does", step 4), in pure numpy.

Diagonal-wise Refactorization (DR) sees a DW layer with C_out output channels as G = ceil(C_out/32) sub-GEMMs;
sub-GEMM g owns channels [32g, min(32g+32, C_out)) and its "vectors" are those channels' (ky, kx) weights,
V_g = |g|*kh*kw of them. Keeping a weight keeps one K column of its sub-GEMM, so element-wise pruning on the
DW weight is structured pruning of the sub-GEMMs.

Every function returns a boolean keep mask of the weight's shape and never reads or changes a model. Ties in
magnitude are broken by flat index (the lower index is pruned first, restored first), so masks are
deterministic. Counts use round-half-up, ``floor(x + 0.5)``, not Python's banker's rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deprune_onnx.op.spec import K_TILE as DEFAULT_TILE
from deprune_onnx.op.spec import SUBGEMM_CHANNELS


def round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def subgemm_sizes(channels: int, width: int = SUBGEMM_CHANNELS) -> np.ndarray:
    """Channels per sub-GEMM: [32, 32, ..., remainder]."""
    sizes = np.full(-(-channels // width), width, dtype=np.int64)
    if channels % width:
        sizes[-1] = channels % width
    return sizes


def subgemm_vectors(weight_shape: tuple[int, ...], width: int = SUBGEMM_CHANNELS) -> np.ndarray:
    """V_g, the number of weights (K vectors) of every sub-GEMM of a DW weight [C_out, 1, kh, kw] (or a 1-D
    DW weight [C_out, 1, k], the 1xk case)."""
    return subgemm_sizes(int(weight_shape[0]), width) * int(np.prod(weight_shape[2:]))


def kept_per_subgemm(keep: np.ndarray, width: int = SUBGEMM_CHANNELS) -> np.ndarray:
    """K_g, the kept weights of every sub-GEMM."""
    per_channel = keep.reshape(keep.shape[0], -1).sum(axis=1)
    groups = -(-keep.shape[0] // width)
    padded = np.zeros(groups * width, dtype=np.int64)
    padded[: keep.shape[0]] = per_channel
    return padded.reshape(groups, width).sum(axis=1)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of every entry of each row in ascending score order, ties by position (stable)."""
    order = np.argsort(scores, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[-1])[None, :].repeat(scores.shape[0], 0), axis=-1)
    return ranks


def _subgemm_rows(values: np.ndarray, width: int) -> list[tuple[slice, np.ndarray]]:
    """Split a per-channel array [C, taps] into sub-GEMM rows: one [G_full, width*taps] block of the full
    sub-GEMMs plus one [1, rest*taps] row for a partial last sub-GEMM. Returns (channel slice, rows) pairs."""
    channels = values.shape[0]
    full = channels // width
    blocks = []
    if full:
        blocks.append((slice(0, full * width), values[: full * width].reshape(full, -1)))
    if channels % width:
        blocks.append((slice(full * width, channels), values[full * width:].reshape(1, -1)))
    return blocks


def dcp_mask(weight: np.ndarray, ratio: float) -> np.ndarray:
    """DCP: prune the round(PR * N) smallest |w| of the whole layer."""
    magnitude = np.abs(weight.astype(np.float64)).reshape(1, -1)
    n_prune = round_half_up(ratio * magnitude.size)
    return (_ranks(magnitude) >= n_prune).reshape(weight.shape)


def bwt_mask(weight: np.ndarray, ratio: float, width: int = SUBGEMM_CHANNELS) -> np.ndarray:
    """DCP + BWT: prune round(PR * V_g) smallest |w| within every sub-GEMM (balanced range width*kh*kw)."""
    magnitude = np.abs(weight.astype(np.float64)).reshape(weight.shape[0], -1)
    keep = np.ones(magnitude.shape, dtype=bool)
    for channels, rows in _subgemm_rows(magnitude, width):
        n_prune = round_half_up(ratio * rows.shape[1])
        keep[channels] = (_ranks(rows) >= n_prune).reshape(-1, magnitude.shape[1])
    return keep.reshape(weight.shape)


def channel_mask(weight: np.ndarray, ratio: float) -> np.ndarray:
    """Baseline: prune the round(PR * C) whole channels of smallest l2 norm (zeroed, not removed).

    At equal PR this removes as many weights as DCP/BWT but in whole rows of kh*kw, which is how DW channel
    pruning compares with DEPrune (paper Table 6 and its EfficientNet-B0 motivation).
    """
    norms = np.sqrt(np.square(weight.astype(np.float64)).reshape(1, weight.shape[0], -1).sum(axis=-1))
    n_prune = round_half_up(ratio * weight.shape[0])
    keep_channel = _ranks(norms)[0] >= n_prune
    return np.broadcast_to(keep_channel.reshape(-1, *([1] * (weight.ndim - 1))), weight.shape).copy()


def global_masks(weights: list[np.ndarray], ratio: float) -> list[np.ndarray]:
    """Baseline: one magnitude ranking over all the given DW layers; prune the round(PR * N) smallest |w|.

    Per-layer ratios then follow the weight scales (folded BatchNorm makes them differ a lot between layers),
    which is the point of comparing with it. Ties by layer order, then flat index.
    """
    if not weights:
        return []
    magnitude = np.concatenate([np.abs(w.astype(np.float64)).reshape(-1) for w in weights]).reshape(1, -1)
    keep = (_ranks(magnitude) >= round_half_up(ratio * magnitude.size)).reshape(-1)
    bounds = np.cumsum([0] + [w.size for w in weights])
    return [keep[start:stop].reshape(w.shape) for w, start, stop in zip(weights, bounds[:-1], bounds[1:])]


def keep_top_per_subgemm(scores: np.ndarray, kept: np.ndarray, width: int = SUBGEMM_CHANNELS) -> np.ndarray:
    """Keep the ``kept[g]`` highest-scoring weights of every sub-GEMM g (ties by flat index, lower pruned first).

    Re-selecting weights by another score this way leaves every K_g, hence the DR/tile structure, unchanged.
    """
    flat = scores.astype(np.float64).reshape(scores.shape[0], -1)
    keep = np.zeros(flat.shape, dtype=bool)
    offset = 0
    for channels, rows in _subgemm_rows(flat, width):
        counts = np.asarray(kept[offset: offset + rows.shape[0]])
        keep[channels] = (_ranks(rows) >= rows.shape[1] - counts[:, None]).reshape(-1, flat.shape[1])
        offset += rows.shape[0]
    return keep.reshape(scores.shape)


def align_subgemms(weight: np.ndarray, keep: np.ndarray, pattern: str, tile: int = DEFAULT_TILE,
                   width: int = SUBGEMM_CHANNELS, extra_tiles: int = 0) -> np.ndarray:
    """HSR alignment of one layer: every sub-GEMM's K_g becomes a multiple of ``tile`` (or V_g).

    ``pattern`` "o" (over-aligned): prune the eps_g = K_g mod T smallest kept weights more. "u" (under-aligned):
    restore the T - eps_g largest pruned weights at their original values (never beyond V_g).
    ``extra_tiles`` moves each sub-GEMM that many whole tiles further in the same direction (the balance step
    of ``balance_hsr``); over-alignment never empties a sub-GEMM.
    """
    if pattern not in ("o", "u"):
        raise ValueError(f"pattern must be 'o' or 'u', got {pattern!r}")
    magnitude = np.abs(weight.astype(np.float64)).reshape(weight.shape[0], -1)
    flat_keep = keep.reshape(weight.shape[0], -1).copy()
    for channels, rows in _subgemm_rows(magnitude, width):
        row_keep = flat_keep[channels].reshape(rows.shape)
        kept = row_keep.sum(axis=1)
        vectors = rows.shape[1]
        eps = np.where(kept == vectors, 0, kept % tile)
        if pattern == "o":
            prune = np.minimum(eps + extra_tiles * tile, np.maximum(kept - eps - tile, 0) + eps)
            ranks = _ranks(np.where(row_keep, rows, np.inf))
            row_keep &= ~(ranks < prune[:, None])
        else:
            restore = np.where(eps > 0, tile - eps, 0) + extra_tiles * tile
            restore = np.where(kept < vectors, np.minimum(restore, vectors - kept), 0)
            ranks = _ranks(np.where(row_keep, np.inf, -rows))
            row_keep |= ranks < restore[:, None]
        flat_keep[channels] = row_keep.reshape(-1, magnitude.shape[1])
    return flat_keep.reshape(weight.shape)


@dataclass(frozen=True)
class Misalignment:
    """HSR's view of one layer after BWT: how far its sub-GEMMs are from the tile and what fixing it buys."""

    eps: int            # unpruned vectors in partial tiles, summed over sub-GEMMs
    alpha: float | None  # speedup of removing the partial tiles (t_now / t_over - 1); None if over is impossible
    can_over_align: bool


def tile_time(kept: np.ndarray, tile: int = DEFAULT_TILE) -> int:
    """Tile cost model: a sub-GEMM costs ceil(K_g/T) tile steps and the slowest sets the layer time."""
    return int(np.max(-(-np.asarray(kept) // tile))) if len(kept) else 0


def misalignment(kept: np.ndarray, vectors: np.ndarray, tile: int = DEFAULT_TILE) -> Misalignment:
    """Tile-model eps and alpha of a layer with kept counts K_g (sub-GEMMs with K_g == V_g are aligned)."""
    kept = np.asarray(kept)
    eps_g = np.where(kept == vectors, 0, kept % tile)
    over = kept - eps_g
    can_over = bool(np.all(over[eps_g > 0] > 0))  # over-aligning must not empty a sub-GEMM
    t_now, t_over = tile_time(kept, tile), tile_time(over, tile)
    alpha = (t_now / t_over - 1.0) if can_over and t_over > 0 else None
    return Misalignment(int(eps_g.sum()), alpha, can_over)


# A damage difference at or below this counts as none (over-aligning is then free, and ranks first).
_NO_DAMAGE = 1e-12


def energy_damage(weight: np.ndarray, keeps: list[np.ndarray]) -> list[float]:
    """Data-free damage proxy of each keep mask: the relative weight energy it removes, sum_pruned w^2 / sum w^2.

    Relative to the layer's own energy, so layers with different weight scales (folded BatchNorm) compare."""
    energy = np.square(weight.astype(np.float64))
    total = max(float(energy.sum()), 1e-30)
    return [float(energy[~keep].sum() / total) for keep in keeps]


def choose_hsr_patterns(layers: list[tuple[Misalignment, float | None]],
                        damage_gaps: list[float | None] | None = None) -> list[str]:
    """Rank misaligned layers: top half over-aligned ("o"), bottom half under-aligned ("u").

    ``layers`` holds each layer's Misalignment and, when measured (``--hsr-timings``), its measured alpha that
    replaces the tile model's. Aligned layers get "aligned". Layers that cannot be over-aligned rank last. With
    n misaligned layers, floor(n/2) are over-aligned (the paper's 9u8o for 17 layers).

    Without ``damage_gaps`` the rank is the paper's beta = alpha / eps. With them (``--hsr-rank damage``; one
    entry per layer: expected damage of over- minus under-aligning it, e.g. measured KL or ``energy_damage``)
    the rank is alpha / gap, speed gained per unit of expected damage, so sensitive layers are under-aligned.
    """
    patterns = ["aligned"] * len(layers)
    misaligned = [i for i, (info, _) in enumerate(layers) if info.eps > 0]

    def beta(position: int) -> float:
        info, measured = layers[position]
        alpha = measured if measured is not None else info.alpha
        if not info.can_over_align or alpha is None:
            return -math.inf
        if damage_gaps is not None:
            gap = damage_gaps[position]
            return alpha / max(gap if gap is not None else math.inf, _NO_DAMAGE)
        return alpha / info.eps

    ranked = sorted(misaligned, key=lambda i: (-beta(i), i))
    n_over = len(misaligned) // 2
    for rank, position in enumerate(ranked):
        over = rank < n_over and beta(position) != -math.inf
        patterns[position] = "o" if over else "u"
    return patterns
