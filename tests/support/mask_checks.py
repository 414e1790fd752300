"""Structural checks of DW masks (DCP/BWT/HSR, README.md step 4), shared by the mask, baseline and calibration tests.

They do not reuse the code under test: sub-GEMM ranges, counts and the largest-magnitude property are recomputed
with plain loops.
"""
from __future__ import annotations

import numpy as np

T = 32


def subgemm_slices(channels: int) -> list[slice]:
    return [slice(start, min(start + 32, channels)) for start in range(0, channels, 32)]


def assert_largest_kept(weight: np.ndarray, keep: np.ndarray, ranges: list[slice]) -> None:
    """In each ranking range, every kept |w| >= every pruned |w| (ties may fall either way)."""
    for channels in ranges:
        magnitude = np.abs(weight[channels]).ravel()
        kept = keep[channels].ravel()
        if kept.all() or not kept.any():
            continue
        assert magnitude[kept].min() >= magnitude[~kept].max()


def assert_bh_structure(plans: list, weights: dict[str, np.ndarray], beta_rank: bool = True) -> None:
    """DEPrune-BH rules: half of the misaligned layers over-aligned, every sub-GEMM's K a multiple of the tile
    (or all of it), never empty, the recorded K equal to the mask's, the largest |w| kept inside each sub-GEMM,
    and (``beta_rank``: the paper's rule, not --hsr-rank damage) the over-aligned layers those with the highest
    beta."""
    misaligned = [p for p in plans if p.pattern in ("o", "u")]
    assert sum(p.pattern == "o" for p in misaligned) == len(misaligned) // 2
    for plan in plans:
        vectors = np.array(plan.vectors_per_subgemm)
        kept = np.array(plan.kept_per_subgemm)
        keep = plan.keep_mask()
        assert [int(keep[s].sum()) for s in subgemm_slices(plan.shape[0])] == plan.kept_per_subgemm
        assert np.all((kept % T == 0) | (kept == vectors)), plan.name
        assert np.all(kept > 0)
        assert_largest_kept(weights[plan.name], keep, subgemm_slices(plan.shape[0]))
    eligible = [p for p in misaligned if p.beta is not None]
    over_betas = [p.beta for p in eligible if p.pattern == "o"]
    under_betas = [p.beta for p in eligible if p.pattern == "u"]
    if beta_rank and over_betas and under_betas:
        assert min(over_betas) >= max(under_betas)
