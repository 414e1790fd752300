"""Decide the DW masks of a model: per-layer ratios, DCP/BWT masks, HSR alignment (README.md,
"What `prune` does", step 4).

Produces DWLayerPlan entries from a ModelAnalysis; reads weights, writes nothing. HSR needs every layer's BWT
result before it can rank layers by beta, so planning is two passes: masks per layer, then the model-wide
over/under split.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import onnx

from deprune_onnx.analysis import ConvLayer, ModelAnalysis
from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.dw.masks import (SUBGEMM_CHANNELS, Misalignment, align_subgemms, bwt_mask, channel_mask,
                                choose_hsr_patterns, dcp_mask, energy_damage, global_masks, kept_per_subgemm,
                                misalignment, subgemm_vectors, tile_time)
from deprune_onnx.dw.speed import SpeedModel, speed_model
from deprune_onnx.options import DWOptions, OptionError, check_dw_options, literal
from deprune_onnx.plan import DWLayerPlan, encode_mask
from deprune_onnx.progress import progress

if TYPE_CHECKING:
    from deprune_onnx.trt.layer_choice import Timings

# Measures expected damage for candidate masks: {layer: [keep, ...]} -> {layer: [damage, ...]} (e.g. the KL
# of the model's output with that layer alone pruned, recovery/allocation.py measure_masks).
DamageMeasure = Callable[[dict[str, list[np.ndarray]]], dict[str, list[float]]]
# The candidate alignments of a bh layer whose damage --hsr-rank damage weighs: (pattern, extra tiles).
HSR_CANDIDATES = (("u", 0), ("o", 0), ("u", 1), ("o", 1))


def _matching(names: list[str], pattern: str, param: str) -> list[str]:
    """DW layer names equal to ``pattern`` or matching it as a glob; a pattern matching nothing is an error,
    so a typo never silently prunes at the default ratio."""
    matched = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
    if not matched:
        raise OptionError(f"{{{param}}} '{literal(pattern)}': matches no DW layer (list them with "
                          "'deprune-onnx inspect')")
    return matched


def resolve_layer_ratios(names: list[str], options: DWOptions) -> dict[str, float | None]:
    """Ratio per DW layer (None = excluded), from --dw-ratio, --layer-ratio and --exclude."""
    ratios: dict[str, float | None] = {name: options.dw_ratio for name in names}
    for pattern, ratio in options.layer_ratios:
        for name in _matching(names, pattern, "dw.layer_ratios"):
            ratios[name] = ratio
    for pattern in options.exclude:
        for name in _matching(names, pattern, "dw.exclude"):
            ratios[name] = None
    return ratios


def load_hsr_timings(path: str | Path) -> dict[str, float]:
    """Measured HSR alpha per layer from JSON: ``{layer: alpha}``, ``{layer: {"alpha": a}}`` or
    ``{layer: {"time_unaligned_us": t1, "time_aligned_us": t2}}`` (alpha = t1/t2 - 1)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DepruneError(f"{path}: no such file (--hsr-timings)") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DepruneError(f"{path}: cannot read --hsr-timings as JSON ({reason})") from None
    if not isinstance(data, dict):
        raise DepruneError(f"{path}: HSR timings must be a JSON object mapping layer name to alpha")
    alphas: dict[str, float] = {}
    for name, entry in data.items():
        try:
            if isinstance(entry, dict) and "alpha" in entry:
                alpha = float(entry["alpha"])
            elif isinstance(entry, dict):
                alpha = float(entry["time_unaligned_us"]) / float(entry["time_aligned_us"]) - 1.0
            else:
                alpha = float(entry)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            raise DepruneError(f"{path}: layer '{name}': expected alpha or time_unaligned_us/time_aligned_us")
        if not np.isfinite(alpha):
            raise DepruneError(f"{path}: layer '{name}': alpha must be finite")
        alphas[name] = alpha
    return alphas


def load_hsr_file(path: str | Path) -> tuple[dict[str, float], "Timings | None"]:
    """``--hsr-timings FILE``: (alphas, None) for an alpha file (``load_hsr_timings``), or ({}, timings) for a
    ``deprune-onnx tune`` timings file (``"format": "deprune-onnx-timings"``), whose measured per-layer times
    ``--target-speedup`` predicts with (dw/speed.py); a tune file has no alpha, so HSR keeps the tile model."""
    from deprune_onnx.trt.layer_choice import TIMINGS_FORMAT, load_timings

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None  # load_hsr_timings names the problem
    if isinstance(data, dict) and data.get("format") == TIMINGS_FORMAT:
        return {}, load_timings(path)
    return load_hsr_timings(path), None


def layer_mask(weight: np.ndarray, method: str, ratio: float) -> np.ndarray:
    """The method's keep mask of one layer at one ratio, before HSR alignment (global: all kept, decided later)."""
    if ratio == 0.0 or method == "global":  # global masks need every layer first (_apply_global)
        return np.ones(weight.shape, dtype=bool)
    if method == "dcp":
        return dcp_mask(weight, ratio)
    if method == "channel":
        return channel_mask(weight, ratio)
    return bwt_mask(weight, ratio, SUBGEMM_CHANNELS)


def plan_dw_layers(model: onnx.ModelProto, analysis: ModelAnalysis, options: DWOptions,
                   damage: DamageMeasure | None = None) -> list[DWLayerPlan]:
    """One DWLayerPlan per DW layer of ``analysis`` (excluded layers too, with method 'none').

    ``damage`` (bh with ``hsr_rank`` 'damage' or 'auto'): measures the expected damage of candidate masks, e.g.
    KL on calibration images; 'damage' without it uses the data-free proxy ``energy_damage``, 'auto' without it
    the paper's beta."""
    check_dw_options(options)
    unknown = sorted(set(options.hsr_alphas) - {layer.name for layer in analysis.dw_layers})
    if unknown:
        raise OptionError(f"{{dw.hsr_alphas}}: layer '{literal(unknown[0])}' is not a DW layer of the model")

    index = GraphIndex(model.graph)
    ratios = resolve_layer_ratios([layer.name for layer in analysis.dw_layers], options)
    plans: list[DWLayerPlan] = []
    weights: dict[str, np.ndarray] = {}
    for layer in progress(analysis.dw_layers, "masks", unit="layer"):
        weight = index.constant(layer.weight)
        assert weight is not None, "analysis only lists DW layers with constant weights"
        weights[layer.name] = weight
        ratio = ratios[layer.name]
        method = options.method if ratio is not None else "none"
        keep = layer_mask(weight, options.method, ratio or 0.0)
        plans.append(_layer_plan(layer, method, ratio or 0.0, keep))

    if options.method == "global":
        _apply_global(plans, weights, options.dw_ratio)
    if options.method == "bh":
        rank = options.hsr_rank if options.hsr_rank != "auto" else ("damage" if damage is not None else "beta")
        options = replace(options, hsr_rank=rank)
        damages = _hsr_damages(plans, weights, options, damage) if rank == "damage" else None
        source = "measured KL" if damage is not None else "weight energy"
        base_masks = _apply_hsr(plans, weights, options, damages, source)
        _balance_hsr(plans, weights, base_masks, options, damages)
    return plans


def _hsr_damages(plans: list[DWLayerPlan], weights: Mapping[str, np.ndarray], options: DWOptions,
                 damage: DamageMeasure | None) -> dict[str, list[float]]:
    """Expected damage of every HSR_CANDIDATES alignment of every pruned bh layer, measured or proxied."""
    requests = {plan.name: [align_subgemms(weights[plan.name], plan.keep_mask(), pattern, options.tile,
                                           extra_tiles=extra) for pattern, extra in HSR_CANDIDATES]
                for plan in plans if plan.method == "bh" and plan.target_ratio > 0.0
                and misalignment(np.array(plan.kept_per_subgemm), np.array(plan.vectors_per_subgemm),
                                 options.tile).eps > 0}  # aligned layers have no choice to weigh
    if not requests:
        return {}
    if damage is not None:
        return damage(requests)
    return {name: energy_damage(weights[name], keeps) for name, keeps in requests.items()}


def _apply_global(plans: list[DWLayerPlan], weights: Mapping[str, np.ndarray], ratio: float) -> None:
    """One magnitude ranking over every non-excluded DW layer; each layer's note gives its resulting ratio."""
    ranked = [plan for plan in plans if plan.method == "global"]
    if ratio == 0.0:
        return
    for plan, keep in zip(ranked, global_masks([weights[plan.name] for plan in ranked], ratio)):
        _set_mask(plan, keep)
        plan.note = f"global ranking: this layer pruned {1.0 - keep.sum() / keep.size:.3f}"


def _layer_plan(layer: ConvLayer, method: str, ratio: float, keep: np.ndarray) -> DWLayerPlan:
    shape = tuple(int(d) for d in keep.shape)
    return DWLayerPlan(
        name=layer.name, weight=layer.weight, shape=list(shape), method=method, target_ratio=float(ratio),
        mask=encode_mask(keep), kept_per_subgemm=[int(k) for k in kept_per_subgemm(keep)],
        vectors_per_subgemm=[int(v) for v in subgemm_vectors(shape)])


def _apply_hsr(plans: list[DWLayerPlan], weights: Mapping[str, np.ndarray], options: DWOptions,
               damages: Mapping[str, list[float]] | None = None, source: str = "") -> dict[str, np.ndarray]:
    """Rank the pruned layers (by beta, or with ``damages`` by speed per unit of damage) and over-/under-align
    each one's sub-GEMMs to the tile.

    Returns the BWT masks before alignment, which the balance step starts from again.
    """
    base_masks: dict[str, np.ndarray] = {}
    for plan in plans:
        if plan.method == "bh" and plan.target_ratio == 0.0:
            plan.pattern = "aligned"  # dense: K_g == V_g counts as aligned
    candidates = [plan for plan in plans if plan.method == "bh" and plan.target_ratio > 0.0]
    infos: list[tuple[Misalignment, float | None]] = []
    for plan in candidates:
        info = misalignment(np.array(plan.kept_per_subgemm), np.array(plan.vectors_per_subgemm), options.tile)
        infos.append((info, options.hsr_alphas.get(plan.name)))
    gaps = None
    if damages is not None:
        gaps = [damages[plan.name][1] - damages[plan.name][0] if plan.name in damages else None
                for plan in candidates]
    patterns = choose_hsr_patterns(infos, gaps)
    for plan, (info, measured), pattern in zip(candidates, infos, patterns):
        plan.hsr_rank = options.hsr_rank
        if damages is not None and plan.name in damages:
            under, over, under_more, over_more = damages[plan.name]
            plan.hsr_damage = {"source": source, "under": under, "over": over,
                               "under_one_more_tile": under_more, "over_one_more_tile": over_more}
        plan.eps = info.eps
        plan.alpha = measured if measured is not None else info.alpha
        plan.alpha_source = "measured" if measured is not None else "tile-model"
        plan.beta = plan.alpha / info.eps if plan.alpha is not None and info.eps else None
        plan.pattern = pattern
        if not info.can_over_align and info.eps:
            plan.note = "over-aligning would empty a sub-GEMM, so this layer is under-aligned"
        if pattern in ("o", "u"):
            base_masks[plan.name] = plan.keep_mask()
            _set_mask(plan, align_subgemms(weights[plan.name], base_masks[plan.name], pattern, options.tile))
    return base_masks


def _set_mask(plan: DWLayerPlan, keep: np.ndarray) -> None:
    plan.mask = encode_mask(keep)
    plan.kept_per_subgemm = [int(k) for k in kept_per_subgemm(keep)]


# The balance step stops once the model-wide DW ratio is this close to the target.
HSR_BALANCE_TOLERANCE = 0.005


def _balance_hsr(plans: list[DWLayerPlan], weights: Mapping[str, np.ndarray],
                 base_masks: Mapping[str, np.ndarray], options: DWOptions,
                 damages: Mapping[str, list[float]] | None = None) -> None:
    """Bring the model-wide DW ratio back near the target after HSR, keeping every K_g tile-aligned.

    DECISION (the paper is silent): the half/half split keeps the model-wide ratio near the target only when the
    over- and under-aligned layers hold similar weight counts. On MobileNetV2 at 78% the eight over-aligned
    layers are the small early ones (K 63 -> 32 per sub-GEMM) while the nine under-aligned ones gain 1 vector
    each (63 -> 64), which gives 79.9%. So, while the model-wide ratio is more than 0.5 point off, we move one
    layer by one more whole tile in its own direction (restore in an under-aligned layer when over-pruned,
    prune in an over-aligned one when under-pruned), choosing the move that lands closest to the target (ties:
    lowest beta to restore, highest beta to prune). A layer moves at most one extra tile: piling several onto
    one layer reached the target at 0.3 by pruning two MobileNetV2 layers at 89%, which costs far more
    accuracy than the small miss it fixes. Patterns and the u/o split do not change; the plan records the extra
    tile per layer, and the report shows any remaining gap (achieved vs target ratio).

    With ``damages`` (``--hsr-rank damage``) the move is chosen among those that bring the ratio closer to the
    target by expected damage per moved weight instead: the restore that removes the most damage per restored
    weight, or the extra pruning that adds the least damage per pruned weight.
    """
    aligned = [p for p in plans if p.pattern in ("o", "u")]
    pruned = [p for p in plans if p.method != "none"]
    total = sum(sum(p.vectors_per_subgemm) for p in pruned)
    if not aligned or not total:
        return
    target = sum(p.target_ratio * sum(p.vectors_per_subgemm) for p in pruned) / total
    extra = {p.name: 0 for p in aligned}

    def model_ratio() -> float:
        return 1.0 - sum(sum(p.kept_per_subgemm) for p in pruned) / total

    while abs(model_ratio() - target) > HSR_BALANCE_TOLERANCE:
        current = model_ratio()
        direction = "u" if current > target else "o"
        best: tuple[tuple[float, float, int], DWLayerPlan, np.ndarray] | None = None
        for position, plan in enumerate(aligned):
            if plan.pattern != direction or extra[plan.name]:
                continue
            keep = align_subgemms(weights[plan.name], base_masks[plan.name], direction, options.tile,
                                  extra_tiles=1)
            change = int(keep.sum()) - sum(plan.kept_per_subgemm)
            if change == 0:
                continue
            distance = abs(current - change / total - target)
            if damages is not None:
                if distance >= abs(current - target):
                    continue
                d = damages[plan.name]  # HSR_CANDIDATES order: u, o, u+1, o+1
                per_weight = (d[2] - d[0] if direction == "u" else d[3] - d[1]) / abs(change)
                key = (per_weight, 0.0, position)
            else:
                beta = plan.beta if plan.beta is not None else 0.0
                key = (distance, beta if direction == "u" else -beta, position)
            if best is None or key < best[0]:
                best = (key, plan, keep)
        if best is None or (damages is None and best[0][0] >= abs(current - target)):
            return
        _, plan, keep = best
        extra[plan.name] += 1
        _set_mask(plan, keep)
        plan.note = f"balance step: one extra tile {'restored' if direction == 'u' else 'pruned'} per sub-GEMM"


# --target-speedup without --allocate: the uniform ratios tried, coarse then fine.
_SPEEDUP_COARSE, _SPEEDUP_FINE = 0.05, 0.01


def ratio_for_speedup(model: onnx.ModelProto, analysis: ModelAnalysis, options: DWOptions,
                      speed: SpeedModel | None = None) -> float:
    """The least uniform --dw-ratio (on a 0.01 grid) whose plan reaches ``options.target_speedup``, the speedup
    ``speed`` predicts (dw/speed.py; None = the tile cost model, report/build.py ``predicted_dw_speedup``). HSR is
    ranked as asked, but by the data-free proxy when the rank is 'damage' (the measured damage is only taken for
    the final plan)."""
    target = options.target_speedup
    check_dw_options(options)
    if target is None:
        raise OptionError("{dw.target_speedup}: no speedup given")
    if speed is None:
        speed = speed_model(analysis, options.tile)

    def reaches(ratio: float) -> bool:
        plans = plan_dw_layers(model, analysis, replace(options, dw_ratio=ratio, target_speedup=None,
                                                             layer_timings=None))
        speedup = speed.speedup(plan_steps(plans, options.tile))
        return speedup is None or speedup >= target

    coarse = [round(r, 2) for r in np.arange(0.0, 1.0, _SPEEDUP_COARSE)]
    found = next((r for r in coarse if reaches(r)), None)
    if found is None:
        # np.arange's float steps can end on 1.0 itself, which is not a ratio: keep the grid below 1.
        grid = [r for r in (round(r, 2) for r in np.arange(coarse[-1], 1.0, _SPEEDUP_FINE)) if r < 1.0]
        found = next((r for r in grid if reaches(r)), None)
        if found is None:
            raise OptionError(f"{{dw.target_speedup}} {literal(target)}: not reachable below DW ratio 1 "
                              f"({speed.description})")
        return found
    fine = [round(r, 2) for r in np.arange(max(found - _SPEEDUP_COARSE, 0.0) + _SPEEDUP_FINE, found, _SPEEDUP_FINE)]
    return next((r for r in fine if reaches(r)), found)


def plan_steps(plans: list[DWLayerPlan], tile: int) -> dict[str, int]:
    """Tile steps of the slowest sub-GEMM, max_g ceil(K_g / T), of every pruned layer (excluded ones omitted)."""
    return {plan.name: tile_time(np.array(plan.kept_per_subgemm), tile) for plan in plans if plan.method != "none"}
