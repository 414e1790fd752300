"""Plan from an existing zero pattern (``prune --keep-zeros``): check it, align it, never re-decide it.

A model fine-tuned elsewhere with our masks (``export-masks``) comes back as a dense ONNX file whose pruned DW
weights are exactly zero. Here every DW weight that is exactly zero counts as pruned and every other one as kept;
no magnitude ranking happens, so the fine-tuned values survive untouched.

What is checked, per DW layer, for the structure of ``--method`` (violations are reported, not fatal):

- ``dcp``: nothing: DCP's rule (prune the smallest magnitudes) cannot be judged once the pruned weights are zero.
- ``b``: BWT balance: some ratio r must give every sub-GEMM exactly round(r * V_g) pruned weights (the rounding
  of ``bwt_mask``). Otherwise the least pruned sub-GEMM sets the layer time (Real DW below the layer's ratio).
- ``bh``: HSR alignment: every sub-GEMM keeps a multiple of the tile T (or all its V_g vectors); and balance:
  all full sub-GEMMs keep the same K (a partial last sub-GEMM is checked for alignment only, because alignment
  moves it by a different amount than the full ones).

Alignment (``bh`` only): misaligned layers are ranked by beta = alpha/eps exactly like ``prune`` does; the top
half is over-aligned (the eps smallest non-zero weights of each partial tile become zero, which changes the
model) and the bottom half under-aligned. DECISION: an under-aligned layer restores pruned taps whose value is
zero (the original values are gone), so under-alignment never changes what the model computes; the restored
taps are kept taps of the plan and travel, zero-valued, into the packed op. HSR pattern labels (o/u) of an
already aligned model cannot be recovered from its zeros: such layers are reported as "aligned".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from deprune_onnx.analysis import ModelAnalysis
from deprune_onnx.options import DW_METHODS, check_choice, check_tile
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.dw.masks import (SUBGEMM_CHANNELS, Misalignment, align_subgemms, choose_hsr_patterns,
                                kept_per_subgemm, misalignment, subgemm_sizes, subgemm_vectors)
from deprune_onnx.plan import DWLayerPlan, encode_mask


@dataclass
class KeepZerosPlan:
    """DW layer plans built from the zero pattern, and the structural violations found before alignment."""

    dw_layers: list[DWLayerPlan]
    violations: dict[str, list[str]] = field(default_factory=dict)  # layer name -> one line per broken rule

    def to_dict(self) -> dict[str, object]:
        return {"violations": self.violations,
                "layers_with_violations": sorted(self.violations)}


def bwt_balance_violation(kept: np.ndarray, vectors: np.ndarray) -> str | None:
    """Why the per-sub-GEMM pruned counts cannot come from one BWT ratio, or None when they can.

    ``round_half_up(r * V_g) == p_g`` holds for r in [(p_g - 0.5)/V_g, (p_g + 0.5)/V_g); one ratio fits every
    sub-GEMM exactly when those intervals intersect.
    """
    pruned = vectors - kept
    low = np.max((pruned - 0.5) / vectors)
    high = np.min((pruned + 0.5) / vectors)
    if low < high:
        return None
    ratios = pruned / vectors
    return (f"BWT: sub-GEMM pruning ratios differ ({ratios.min():.3f}..{ratios.max():.3f}); the least pruned "
            f"sub-GEMM sets the layer time (Real DW {ratios.min():.3f})")


def hsr_alignment_violation(kept: np.ndarray, vectors: np.ndarray, tile: int) -> str | None:
    """Which sub-GEMMs keep a K that is neither a multiple of the tile nor all their vectors."""
    misaligned = np.flatnonzero((kept % tile != 0) & (kept != vectors))
    if not misaligned.size:
        return None
    shown = ", ".join(f"g{g}: K={kept[g]}" for g in misaligned[:4])
    more = f" and {misaligned.size - 4} more" if misaligned.size > 4 else ""
    return f"HSR: {misaligned.size} sub-GEMM(s) not aligned to the tile {tile} ({shown}{more})"


def full_subgemm_balance_violation(kept: np.ndarray, channels: int, width: int) -> str | None:
    """Whether the full (``width``-channel) sub-GEMMs of a layer keep different K."""
    full = kept[subgemm_sizes(channels, width) == width]
    if full.size < 2 or np.all(full == full[0]):
        return None
    return f"BWT: full sub-GEMMs keep different K ({full.min()}..{full.max()})"


def check_dw_structure(keep: np.ndarray, method: str, tile: int, width: int = SUBGEMM_CHANNELS) -> list[str]:
    """The structural rules of ``method`` that the keep mask of one DW weight [C, 1, kh, kw] breaks."""
    kept = kept_per_subgemm(keep, width)
    vectors = subgemm_vectors(keep.shape, width)
    if method == "b":
        found = [bwt_balance_violation(kept, vectors)]
    elif method == "bh":
        found = [hsr_alignment_violation(kept, vectors, tile),
                 full_subgemm_balance_violation(kept, keep.shape[0], width)]
    else:
        found = []
    return [line for line in found if line is not None]


def _zero_pattern_plan(name: str, weight_name: str, keep: np.ndarray, method: str) -> DWLayerPlan:
    shape = [int(d) for d in keep.shape]
    pruned = not keep.all()
    return DWLayerPlan(
        name=name, weight=weight_name, shape=shape, method=method if pruned else "none",
        target_ratio=float(1.0 - keep.mean()), mask=encode_mask(keep),
        kept_per_subgemm=[int(k) for k in kept_per_subgemm(keep)],
        vectors_per_subgemm=[int(v) for v in subgemm_vectors(tuple(shape))],
        pattern="aligned" if method == "bh" and pruned else "-",
        note="mask = zero pattern of the input (--keep-zeros)" if pruned else "no zero weights: left dense")


def plan_keep_zeros(model: onnx.ModelProto, analysis: ModelAnalysis, method: str = "bh",
                    tile: int = 32) -> KeepZerosPlan:
    """DWLayerPlan entries whose masks are the DW weights' zero patterns, checked (and for ``bh`` aligned)."""
    check_choice(method, DW_METHODS, "dw.method")
    check_tile(tile)
    index = GraphIndex(model.graph)
    plans: list[DWLayerPlan] = []
    weights: dict[str, np.ndarray] = {}
    violations: dict[str, list[str]] = {}
    for layer in analysis.dw_layers:
        weight = index.constant(layer.weight)
        assert weight is not None, "analysis only lists DW layers with constant weights"
        weights[layer.name] = weight
        keep = weight != 0
        plan = _zero_pattern_plan(layer.name, layer.weight, keep, method)
        plans.append(plan)
        if plan.method != "none":
            broken = check_dw_structure(keep, method, tile)
            if broken:
                violations[layer.name] = broken
    if method == "bh":
        _align_misaligned(plans, weights, tile)
    return KeepZerosPlan(plans, violations)


def _align_misaligned(plans: list[DWLayerPlan], weights: dict[str, np.ndarray], tile: int) -> None:
    """HSR on the layers whose zero pattern is not tile-aligned; aligned layers stay exactly as they are."""
    candidates: list[tuple[DWLayerPlan, Misalignment]] = []
    for plan in plans:
        if plan.method == "none":
            continue
        info = misalignment(np.array(plan.kept_per_subgemm), np.array(plan.vectors_per_subgemm), tile)
        if info.eps:
            candidates.append((plan, info))
    patterns = choose_hsr_patterns([(info, None) for _, info in candidates])
    for (plan, info), pattern in zip(candidates, patterns):
        keep = align_subgemms(weights[plan.name], plan.keep_mask(), pattern, tile)
        plan.pattern, plan.eps, plan.alpha, plan.alpha_source = pattern, info.eps, info.alpha, "tile-model"
        plan.beta = info.alpha / info.eps if info.alpha is not None else None
        plan.mask = encode_mask(keep)
        plan.kept_per_subgemm = [int(k) for k in kept_per_subgemm(keep)]
        plan.note = ("--keep-zeros: over-aligned, the smallest kept weights of each partial tile set to zero"
                     if pattern == "o" else
                     "--keep-zeros: under-aligned with zero-valued taps (the model's output is unchanged)")
