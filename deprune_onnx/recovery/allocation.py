"""Sensitivity-aware DW ratios (``--allocate kl``): measure what pruning each layer costs, then choose per-layer
ratios that meet the model-wide DW ratio with the least total predicted loss.

Why: DW layers differ a lot in how much pruning they tolerate (on MobileNetV2 a stride-2 layer pruned alone at
0.5 costs more than all middle layers together), so one ratio everywhere wastes accuracy.

Measure: for every DW layer alone, at a few ratios, the mean KL(unpruned || pruned) of the model's outputs on
the calibration samples. The layer's mask is the method's mask at that ratio; with ``refit`` the layer's kept
weights are first refit by least squares on its unpruned input (the same solve as ``calibration``), so the
measured loss is the loss that --calib will leave. The unpruned model runs once, in pieces; each layer's
candidates then run only the rest of the graph from that layer on.

Choose: a candidate ratio per layer (for ``bh``: the ratios whose kept count per full sub-GEMM is a multiple of the
tile, so HSR has nothing left to move; otherwise a 0.05 grid), each with its KL interpolated linearly between the
measured points (0 at ratio 0; nothing above the largest measured ratio). Then an exact dynamic programme over
the pruned weight count (buckets of 1/4000 of the DW weights) minimises the sum of predicted KLs subject to the
model-wide ratio (by weight count) being within ``tolerance`` of the target. Summing per-layer KLs is the usual
additive approximation; the measured KL of the result is what ``eval`` reports.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from deprune_onnx.analysis import ModelAnalysis
from deprune_onnx.recovery.refit import (DEFAULT_DAMP, ParameterWriter, analysis_input, reference_stats, refit_channels,
                                      stacked)
from deprune_onnx.dw.planner import layer_mask
from deprune_onnx.errors import DepruneError
from deprune_onnx.evaluation.metrics import kl_divergence, log_probabilities
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.progress import progress
from deprune_onnx.recovery.staged import StagedForward

DEFAULT_MEASURED_RATIOS = (0.25, 0.5, 0.75, 0.9)
GRID_STEP = 0.05
DEFAULT_TOLERANCE = 0.005
_BUCKETS = 4000


@dataclass
class LayerSensitivity:
    name: str
    weights: int
    ratios: list[float]   # ratios actually measured (0 included; for bh the tile-aligned ones nearest the asked)
    kl: list[float]       # mean KL at each


def candidate_ratios(shape: tuple[int, ...], method: str, max_ratio: float, tile: int = 32) -> np.ndarray:
    """Ratios a layer may get: tile-aligned kept counts of a full 32-channel sub-GEMM for bh, a 0.05 grid else."""
    if method == "bh":
        vectors = min(shape[0], 32) * shape[2] * shape[3]
        kept = np.arange(vectors, 0, -tile)
        ratios = 1.0 - kept / vectors
    else:
        ratios = np.arange(0.0, 1.0, GRID_STEP)
    return np.round(ratios[ratios <= max_ratio + 1e-9], 6)


def measure_sensitivity(model: onnx.ModelProto, analysis: ModelAnalysis, method: str, inputs: np.ndarray,
                        ratios: tuple[float, ...] = DEFAULT_MEASURED_RATIOS, refit: bool = True,
                        damp: float = DEFAULT_DAMP, tile: int = 32, layers: list[str] | None = None) -> list[LayerSensitivity]:
    """KL of the model's outputs with one DW layer pruned (and refit) at each ratio, every other layer dense."""
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise DepruneError(f"--allocate-ratios {list(ratios)}: every measured ratio must be in (0, 1)")
    index = GraphIndex(model.graph)
    chosen = [layer for layer in analysis.dw_layers if layers is None or layer.name in layers]
    masks: dict[str, list[np.ndarray]] = {}
    for layer in chosen:
        weight = index.constant(layer.weight)
        masks[layer.name] = [layer_mask(weight, "b" if method == "bh" else method,
                                        _aligned(ratio, weight.shape, method, tile)) for ratio in ratios]
    kls = measure_masks(model, analysis, inputs, masks, refit, damp, "sensitivity")
    return [LayerSensitivity(layer.name, int(masks[layer.name][0].size),
                             [0.0] + [float(1.0 - keep.mean()) for keep in masks[layer.name]],
                             [0.0] + kls[layer.name]) for layer in chosen]


def measure_masks(model: onnx.ModelProto, analysis: ModelAnalysis, inputs: np.ndarray,
                  masks: dict[str, list[np.ndarray]], refit: bool = True, damp: float = DEFAULT_DAMP,
                  label: str = "sensitivity") -> dict[str, list[float]]:
    """Mean KL(unpruned || pruned) over ``inputs`` of the model's output for every candidate keep mask of every
    DW layer named in ``masks`` (layer name -> masks of its weight's shape), that layer alone pruned (and, with
    ``refit``, its kept weights refit by least squares on its unpruned input), every other layer dense.

    The unpruned model runs once, in pieces; each layer's candidates run only the rest of the graph from it."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    index = GraphIndex(work.graph)
    chosen = [layer for layer in analysis.dw_layers if layer.name in masks]
    params = {}
    writer = ParameterWriter(work)
    for layer in chosen:  # every DW weight and bias its own initializer, so a branch can feed candidates
        weight = index.constant(layer.weight)
        bias = index.constant(layer.bias) if layer.bias else np.zeros(weight.shape[0], weight.dtype)
        writer.write(layer.name, 1, weight, "sensitivity_weight")
        writer.write(layer.name, 2, bias, "sensitivity_bias")
        params[layer.name] = (weight, bias)
    output = work.graph.output[0].name
    input_name = analysis_input(work)
    reference_out = _log_probs(_reference_outputs(work, input_name, inputs, output))
    staged = StagedForward(work, {input_name: inputs})
    nodes = {node.name: node for node in work.graph.node}
    results: dict[str, list[float]] = {}
    for layer in progress(chosen, label, unit="layer"):
        weight, bias = params[layer.name]
        node = nodes[layer.name]
        x = staged.advance([layer.input])[layer.input]
        branch = staged.branch([output], [node.input[1], node.input[2]])
        w0 = stacked(weight, bias)
        stats = reference_stats(x, layer, w0) if refit else None
        kls = []
        for keep in masks[layer.name]:
            flat = keep.reshape(weight.shape[0], -1)
            if stats is not None:
                fitted = refit_channels(stats, w0, flat, damp)
            else:
                fitted = np.where(np.concatenate([flat, np.ones((len(flat), 1), bool)], axis=1), w0, 0.0)
            out = branch.run({node.input[1]: fitted[:, :-1].reshape(weight.shape).astype(weight.dtype),
                              node.input[2]: fitted[:, -1].astype(bias.dtype)})[output]
            kls.append(float(kl_divergence(reference_out, _log_probs(out)).mean()))
        results[layer.name] = kls
    return results


def _aligned(ratio: float, shape: tuple[int, ...], method: str, tile: int) -> float:
    """For bh, the nearest ratio whose kept count per full sub-GEMM is a multiple of the tile."""
    if method != "bh":
        return ratio
    grid = candidate_ratios(shape, "bh", 1.0, tile)
    grid = grid[grid < 1.0]
    return float(grid[np.argmin(np.abs(grid - ratio))])


def _log_probs(outputs: np.ndarray) -> np.ndarray:
    return log_probabilities(outputs.reshape(len(outputs), -1))


def _reference_outputs(model: onnx.ModelProto, input_name: str, inputs: np.ndarray, output: str) -> np.ndarray:
    return StagedForward(model, {input_name: inputs}).advance([output])[output]


def predicted_loss(curve: LayerSensitivity, ratios: np.ndarray) -> np.ndarray:
    """KL at ``ratios`` by linear interpolation of the measured points (monotone envelope: pruning more never
    predicts less loss)."""
    measured = np.maximum.accumulate(np.asarray(curve.kl, dtype=np.float64))
    return np.interp(ratios, np.asarray(curve.ratios), measured)


@dataclass
class Allocation:
    ratios: dict[str, float]
    predicted: dict[str, float]
    achieved_ratio: float
    predicted_total: float
    predicted_speedup: dict[str, float] | None = None   # --target-speedup: per layer, tile model
    predicted_dw_speedup: float | None = None            # --target-speedup: model-wide DW, tile model


def tile_steps(shape: tuple[int, ...], ratios: np.ndarray, tile: int = 32) -> np.ndarray:
    """Tile cost model steps, max_g ceil(K_g/T), of a layer at each ratio: BWT's kept count of a full sub-GEMM
    (the slowest one), K = V - round_half_up(r V) with V = min(C, 32) * kh * kw."""
    vectors = min(shape[0], 32) * shape[2] * shape[3]
    kept = vectors - np.floor(np.asarray(ratios) * vectors + 0.5)
    return np.ceil(kept / tile).astype(np.int64)


def allocate_for_speedup(curves: list[LayerSensitivity], shapes: dict[str, tuple[int, ...]],
                         scales: dict[str, int], speedup: float, method: str, tile: int = 32,
                         fixed_cost: int = 0) -> Allocation:
    """Per-layer ratios with predicted DW speedup (tile model: a layer costs ``scales`` (= G * H_out * W_out)
    times its tile steps) at least ``speedup`` and the least sum of predicted KLs: the same exact dynamic
    programme as ``allocate_ratios``, over saved cost instead of pruned weights (saved cost rounded down to
    buckets of 1/4000 of the dense cost, so the constraint holds exactly). ``fixed_cost``: tile-model cost of the
    DW layers left dense (excluded), which count in the model-wide speedup."""
    if not speedup >= 1.0 or not np.isfinite(speedup):
        raise DepruneError(f"--target-speedup {speedup}: must be a finite number >= 1")
    if not curves:
        raise DepruneError("--allocate: no DW layer to allocate ratios to")
    dense = {c.name: int(tile_steps(shapes[c.name], np.zeros(1), tile)[0]) * scales[c.name] for c in curves}
    total = sum(dense.values()) + fixed_cost
    need = total * (1.0 - 1.0 / speedup)
    bucket = total / _BUCKETS
    best = np.full(_BUCKETS + 1, np.inf)
    best[0] = 0.0
    choices = []
    for curve in curves:
        options = candidate_ratios(shapes[curve.name], method, max(curve.ratios), tile)
        losses = predicted_loss(curve, options)
        saved = dense[curve.name] - tile_steps(shapes[curve.name], options, tile) * scales[curve.name]
        steps = np.floor(saved / bucket + 1e-9).astype(np.int64)
        table = np.full((len(options), _BUCKETS + 1), np.inf)
        for row, (step, loss) in enumerate(zip(steps, losses)):
            table[row, step:] = best[: _BUCKETS + 1 - step] + loss
        pick = np.argmin(table, axis=0)
        best = table[pick, np.arange(_BUCKETS + 1)]
        choices.append((options, steps, pick))
    low = int(np.ceil(need / bucket - 1e-9))
    window = best[low:]
    if not window.size or not np.isfinite(window).any():
        raise DepruneError(f"--target-speedup {speedup}: not reachable with per-layer ratios up to the largest "
                           "measured ratio (tile model); measure higher ratios with --allocate-ratios")
    position = low + int(np.argmin(window))
    ratios: dict[str, float] = {}
    predicted: dict[str, float] = {}
    for curve, (options, steps, pick) in zip(reversed(curves), reversed(choices)):
        row = pick[position]
        ratios[curve.name] = float(options[row])
        predicted[curve.name] = float(predicted_loss(curve, options[row:row + 1])[0])
        position -= int(steps[row])
    per_layer = {c.name: float(dense[c.name] / (tile_steps(shapes[c.name], np.array([ratios[c.name]]), tile)[0]
                                                * scales[c.name])) for c in curves}
    pruned_cost = fixed_cost + sum(dense[c.name] / per_layer[c.name] for c in curves)
    weights = sum(c.weights for c in curves)
    achieved = sum(ratios[c.name] * c.weights for c in curves) / weights
    return Allocation({c.name: ratios[c.name] for c in curves}, {c.name: predicted[c.name] for c in curves},
                      float(achieved), float(sum(predicted.values())), per_layer, float(total / pruned_cost))


def allocate_ratios(curves: list[LayerSensitivity], shapes: dict[str, tuple[int, ...]], target: float,
                    method: str, tile: int = 32, tolerance: float = DEFAULT_TOLERANCE) -> Allocation:
    """Per-layer ratios with model-wide ratio (by weight count) within ``tolerance`` of ``target`` and the least
    sum of predicted KLs: an exact dynamic programme over pruned-weight buckets (see the module docstring)."""
    total = sum(c.weights for c in curves)
    if not curves or total == 0:
        raise DepruneError("--allocate: no DW layer to allocate ratios to")
    bucket = total / _BUCKETS
    infinity = np.inf
    best = np.full(_BUCKETS + 1, infinity)
    best[0] = 0.0
    choices: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for curve in curves:
        options = candidate_ratios(shapes[curve.name], method, max(curve.ratios), tile)
        losses = predicted_loss(curve, options)
        steps = np.rint(options * curve.weights / bucket).astype(np.int64)
        table = np.full((len(options), _BUCKETS + 1), infinity)
        for row, (step, loss) in enumerate(zip(steps, losses)):  # a handful of candidates per layer
            table[row, step:] = best[: _BUCKETS + 1 - step] + loss
        pick = np.argmin(table, axis=0)
        best = table[pick, np.arange(_BUCKETS + 1)]
        choices.append((options, steps, pick))
    low, high = int(np.ceil((target - tolerance) * _BUCKETS)), int(np.floor((target + tolerance) * _BUCKETS))
    window = best[max(low, 0): min(high, _BUCKETS) + 1]
    if not window.size or not np.isfinite(window).any():
        reachable = max(sum(max(c.ratios) * c.weights for c in curves) / total, 0.0)
        raise DepruneError(f"--dw-ratio {target}: --allocate cannot reach it with per-layer ratios up to the "
                           f"largest measured ratio (model-wide at most {reachable:.3f}); measure higher ratios "
                           "with --allocate-ratios")
    position = max(low, 0) + int(np.argmin(window))
    ratios: dict[str, float] = {}
    predicted: dict[str, float] = {}
    for curve, (options, steps, pick) in zip(reversed(curves), reversed(choices)):
        row = pick[position]
        ratios[curve.name] = float(options[row])
        predicted[curve.name] = float(predicted_loss(curve, options[row:row + 1])[0])
        position -= int(steps[row])
    achieved = sum(ratios[c.name] * c.weights for c in curves) / total
    return Allocation({c.name: ratios[c.name] for c in curves}, {c.name: predicted[c.name] for c in curves},
                      float(achieved), float(sum(predicted.values())))
