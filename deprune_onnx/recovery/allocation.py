"""Sensitivity-aware DW ratios (``--allocate kl``): measure what pruning each layer costs, then choose per-layer
ratios that meet the model-wide DW ratio with the least total predicted loss.

Why: DW layers differ a lot in how much pruning they tolerate (on MobileNetV2 a stride-2 layer pruned alone at
0.5 costs more than all middle layers together), so one ratio everywhere wastes accuracy.

Measure: for every DW layer alone, at a few ratios, the mean KL(unpruned || pruned) of the model's outputs on
the calibration samples (``--allocate`` softens both at ``ALLOCATE_TEMPERATURE``). The layer's mask is the
method's mask at that ratio; with ``refit`` the layer's kept weights are first refit by least squares on its
unpruned input (the same solve as ``calibration``), fitted without the scored sample's image when the samples'
images are given, so the measured loss is the loss that --calib will leave on images it has not seen. The
unpruned model runs once, in pieces; each layer's candidates then run only the rest of the graph from it.

Choose (``allocate_ratios``; ``allocate_for_speedup`` constrains the time of dw/speed.py instead): a candidate
ratio per layer (for ``bh``: the ratios whose kept count per full sub-GEMM is a multiple of the tile, so HSR has
nothing left to move; otherwise a 0.05 grid), each with its loss interpolated linearly between the measured
points (0 at ratio 0; nothing above the largest measured ratio). Then an exact dynamic programme over the pruned
weight count (buckets of 1/4000 of the DW weights) minimises the sum of predicted losses subject to the
model-wide ratio (by weight count) being within ``tolerance`` of the target. Summing per-layer losses is the
usual additive approximation; the measured KL of the result is what ``eval`` reports (docs/accuracy.md compares
the two).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from deprune_onnx.analysis import ModelAnalysis
from deprune_onnx.recovery.refit import (DEFAULT_DAMP, ParameterWriter, PatchStats, analysis_input, fold_ids,
                                         reference_stats, refit_channels, stacked)
from deprune_onnx.dw.planner import layer_mask
from deprune_onnx.dw.speed import SpeedModel
from deprune_onnx.errors import DepruneError
from deprune_onnx.evaluation.metrics import kl_divergence, log_probabilities
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.progress import progress
from deprune_onnx.recovery.staged import StagedForward

DEFAULT_MEASURED_RATIOS = (0.25, 0.5, 0.75, 0.9)
# --allocate measures KL(softmax(z_ref / T) || softmax(z / T)) * T^2 at this T (the distillation loss's scaling,
# so small changes weigh as at T = 1). Why: a handful of calibration images are mostly confidently classified,
# and plain KL on them hides damage that flips less confident images; softened, it weighs every logit's change.
# Chosen on the choice images (docs/accuracy.md: MobileNetV2 at 0.5, summed per-layer KL of the allocation on
# choice images 1.40 at T = 1, 1.12 at T = 2, 0.83 at T = 4, 0.90 for the T -> infinity limit, logit MSE).
ALLOCATE_TEMPERATURE = 4.0
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
                        damp: float = DEFAULT_DAMP, tile: int = 32, layers: list[str] | None = None,
                        groups: np.ndarray | None = None, temperature: float = 1.0) -> list[LayerSensitivity]:
    """KL of the model's outputs with one DW layer pruned (and refit) at each ratio, every other layer dense
    (``groups``: score each sample with a refit fitted without its image; ``temperature``: see ``measure_masks``)."""
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise DepruneError(f"--allocate-ratios {list(ratios)}: every measured ratio must be in (0, 1)")
    index = GraphIndex(model.graph)
    chosen = [layer for layer in analysis.dw_layers if layers is None or layer.name in layers]
    masks: dict[str, list[np.ndarray]] = {}
    for layer in chosen:
        weight = index.constant(layer.weight)
        masks[layer.name] = [layer_mask(weight, "b" if method == "bh" else method,
                                        _aligned(ratio, weight.shape, method, tile)) for ratio in ratios]
    kls = measure_masks(model, analysis, inputs, masks, refit, damp, "sensitivity", groups, temperature)
    return [LayerSensitivity(layer.name, int(masks[layer.name][0].size),
                             [0.0] + [float(1.0 - keep.mean()) for keep in masks[layer.name]],
                             [0.0] + kls[layer.name]) for layer in chosen]


def measure_masks(model: onnx.ModelProto, analysis: ModelAnalysis, inputs: np.ndarray,
                  masks: dict[str, list[np.ndarray]], refit: bool = True, damp: float = DEFAULT_DAMP,
                  label: str = "sensitivity", groups: np.ndarray | None = None, temperature: float = 1.0
                  ) -> dict[str, list[float]]:
    """Mean KL(unpruned || pruned) over ``inputs`` of the model's output for every candidate keep mask of every
    DW layer named in ``masks`` (layer name -> masks of its weight's shape), that layer alone pruned (and, with
    ``refit``, its kept weights refit by least squares on its unpruned input), every other layer dense.

    ``groups`` [N] (the calibration image of each sample): with ``refit``, every sample is scored with the refit
    fitted without its image's fold (``refit.fold_ids``, up to 5 folds), so the measured loss is the loss on
    images the refit has not seen. Why: a refit scored on the samples it was fitted on hides how badly it
    generalises at high ratios (MobileNetV2, ``--allocate kl`` at 0.5: summed in-sample KL 0.27, measured KL
    0.13 on the calibration samples but 1.49 on other images). None: scored in-sample.
    ``temperature`` T: the KL of the outputs' softmax at T, times T^2 (1: the plain KL in nats).

    The unpruned model runs once, in pieces; each layer's candidates run only the rest of the graph from it."""
    folds = fold_ids(groups, len(inputs)) if groups is not None and refit else None
    if folds is not None and folds.max() < 1:
        folds = None  # one image and one sample: nothing to hold out
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
    reference_out = _log_probs(_reference_outputs(work, input_name, inputs, output), temperature)
    staged = StagedForward(work, {input_name: inputs})
    nodes = {node.name: node for node in work.graph.node}
    results: dict[str, list[float]] = {}
    for layer in progress(chosen, label, unit="layer"):
        weight, bias = params[layer.name]
        node = nodes[layer.name]
        x = staged.advance([layer.input])[layer.input]
        branch = staged.branch([output], [node.input[1], node.input[2]])
        w0 = stacked(weight, bias)
        # (rows scored, normal equations fitted on): one pair for all samples, or one per held-out fold
        fits: list[tuple[np.ndarray | None, PatchStats | None]] = [(None, None)]
        if refit and folds is None:
            fits = [(None, reference_stats(x, layer, w0))]
        elif refit:
            per_fold = [reference_stats(x[folds == f], layer, w0) for f in range(folds.max() + 1)]
            total = per_fold[0]
            for fold in per_fold[1:]:
                total = total + fold
            fits = [(np.flatnonzero(folds == f), total - fold) for f, fold in enumerate(per_fold)]
        kls = []
        for keep in masks[layer.name]:
            flat = keep.reshape(weight.shape[0], -1)
            per_sample = np.zeros(len(inputs))
            for rows, stats in fits:
                if stats is not None:
                    fitted = refit_channels(stats, w0, flat, damp)
                else:
                    fitted = np.where(np.concatenate([flat, np.ones((len(flat), 1), bool)], axis=1), w0, 0.0)
                out = branch.run({node.input[1]: fitted[:, :-1].reshape(weight.shape).astype(weight.dtype),
                                  node.input[2]: fitted[:, -1].astype(bias.dtype)}, rows)[output]
                scored = slice(None) if rows is None else rows
                per_sample[scored] = kl_divergence(reference_out[scored], _log_probs(out, temperature))
            kls.append(float(per_sample.mean()) * temperature ** 2)
        results[layer.name] = kls
    return results


def _aligned(ratio: float, shape: tuple[int, ...], method: str, tile: int) -> float:
    """For bh, the nearest ratio whose kept count per full sub-GEMM is a multiple of the tile."""
    if method != "bh":
        return ratio
    grid = candidate_ratios(shape, "bh", 1.0, tile)
    grid = grid[grid < 1.0]
    return float(grid[np.argmin(np.abs(grid - ratio))])


def _log_probs(outputs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """[N, classes] log-probabilities of the outputs (logits or probabilities), softened at ``temperature``."""
    log_p = log_probabilities(outputs.reshape(len(outputs), -1))
    return log_p if temperature == 1.0 else log_probabilities(log_p / temperature, probabilities=False)


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
    predicted_speedup: dict[str, float] | None = None   # --target-speedup: per layer, by the speed model
    predicted_dw_speedup: float | None = None            # --target-speedup: model-wide, by the speed model


def tile_steps(shape: tuple[int, ...], ratios: np.ndarray, tile: int = 32) -> np.ndarray:
    """Tile cost model steps, max_g ceil(K_g/T), of a layer at each ratio: BWT's kept count of a full sub-GEMM
    (the slowest one), K = V - round_half_up(r V) with V = min(C, 32) * kh * kw."""
    vectors = min(shape[0], 32) * shape[2] * shape[3]
    kept = vectors - np.floor(np.asarray(ratios) * vectors + 0.5)
    return np.ceil(kept / tile).astype(np.int64)


def allocate_for_speedup(curves: list[LayerSensitivity], shapes: dict[str, tuple[int, ...]], speed: SpeedModel,
                         speedup: float, method: str, tile: int = 32) -> Allocation:
    """Per-layer ratios with predicted speedup (``speed``: the tile cost model, measured timings and/or the PW
    time, dw/speed.py) at least ``speedup`` and the least sum of predicted KLs: the same exact dynamic programme
    as ``allocate_ratios``, over saved time instead of pruned weights (saved time rounded down to buckets of
    1/4000 of the dense time, so the constraint holds exactly; a plan within one bucket of the target may be
    missed). DW layers of ``speed`` without a curve (excluded)
    stay dense and count in the speedup, as do the PW convs' times."""
    if not speedup >= 1.0 or not np.isfinite(speedup):
        raise DepruneError(f"--target-speedup {speedup}: must be a finite number >= 1")
    if not curves:
        raise DepruneError("--allocate: no DW layer to allocate ratios to")
    total = speed.dense_total
    need = total / speedup - speed.pw_after   # the DW time left to the allocated layers and the dense ones
    saved_needed = sum(speed.dense_time.values()) - need
    bucket = total / _BUCKETS

    def saved_buckets(curve: LayerSensitivity, options: np.ndarray) -> np.ndarray:
        saved = speed.dense_time[curve.name] - speed.time(curve.name, tile_steps(shapes[curve.name], options, tile))
        return np.floor(np.maximum(saved, 0.0) / bucket + 1e-9).astype(np.int64)

    best, choices = _least_loss_table(curves, shapes, method, tile, saved_buckets)
    low = max(int(np.ceil(saved_needed / bucket - 1e-9)), 0)
    window = best[low:]
    if not window.size or not np.isfinite(window).any():
        raise DepruneError(f"--target-speedup {speedup}: not reachable with per-layer ratios up to the largest "
                           f"measured ratio ({speed.description}); measure higher ratios with --allocate-ratios")
    ratios, predicted = _backtrack(curves, choices, low + int(np.argmin(window)))
    steps = {c.name: int(tile_steps(shapes[c.name], np.array([ratios[c.name]]), tile)[0]) for c in curves}
    per_layer = {c.name: float(speed.dense_time[c.name] / speed.time(c.name, np.array(steps[c.name])))
                 for c in curves}
    weights = sum(c.weights for c in curves)
    achieved = sum(ratios[c.name] * c.weights for c in curves) / weights
    return Allocation({c.name: ratios[c.name] for c in curves}, {c.name: predicted[c.name] for c in curves},
                      float(achieved), float(sum(predicted.values())), per_layer, speed.speedup(steps))


def allocate_ratios(curves: list[LayerSensitivity], shapes: dict[str, tuple[int, ...]], target: float,
                    method: str, tile: int = 32, tolerance: float = DEFAULT_TOLERANCE) -> Allocation:
    """Per-layer ratios with model-wide ratio (by weight count) within ``tolerance`` of ``target`` and the least
    sum of predicted KLs: an exact dynamic programme over pruned-weight buckets (see the module docstring)."""
    total = sum(c.weights for c in curves)
    if not curves or total == 0:
        raise DepruneError("--allocate: no DW layer to allocate ratios to")
    bucket = total / _BUCKETS
    best, choices = _least_loss_table(curves, shapes, method, tile,
                                      lambda curve, options: np.rint(options * curve.weights / bucket).astype(np.int64))
    low, high = int(np.ceil((target - tolerance) * _BUCKETS)), int(np.floor((target + tolerance) * _BUCKETS))
    window = best[max(low, 0): min(high, _BUCKETS) + 1]
    if not window.size or not np.isfinite(window).any():
        reachable = max(sum(max(c.ratios) * c.weights for c in curves) / total, 0.0)
        raise DepruneError(f"--dw-ratio {target}: --allocate cannot reach it with per-layer ratios up to the "
                           f"largest measured ratio (model-wide at most {reachable:.3f}); measure higher ratios "
                           "with --allocate-ratios")
    ratios, predicted = _backtrack(curves, choices, max(low, 0) + int(np.argmin(window)))
    achieved = sum(ratios[c.name] * c.weights for c in curves) / total
    return Allocation({c.name: ratios[c.name] for c in curves}, {c.name: predicted[c.name] for c in curves},
                      float(achieved), float(sum(predicted.values())))


_Choice = tuple[np.ndarray, np.ndarray, np.ndarray]  # per layer: candidate ratios, their bucket steps, best row


def _least_loss_table(curves: list[LayerSensitivity], shapes: dict[str, tuple[int, ...]], method: str, tile: int,
                      bucket_steps) -> tuple[np.ndarray, list[_Choice]]:
    """The forward pass of the allocation programme (shared by ``allocate_ratios`` and ``allocate_for_speedup``):
    ``best[b]`` = least sum of predicted KLs over the layers with exactly ``b`` buckets of the constrained quantity
    (pruned weights or saved tile cost; ``bucket_steps(curve, options)`` gives each candidate's buckets)."""
    best = np.full(_BUCKETS + 1, np.inf)
    best[0] = 0.0
    choices: list[_Choice] = []
    for curve in curves:
        options = candidate_ratios(shapes[curve.name], method, max(curve.ratios), tile)
        losses = predicted_loss(curve, options)
        steps = bucket_steps(curve, options)
        table = np.full((len(options), _BUCKETS + 1), np.inf)
        for row, (step, loss) in enumerate(zip(steps, losses)):  # a handful of candidates per layer
            table[row, step:] = best[: _BUCKETS + 1 - step] + loss
        pick = np.argmin(table, axis=0)
        best = table[pick, np.arange(_BUCKETS + 1)]
        choices.append((options, steps, pick))
    return best, choices


def _backtrack(curves: list[LayerSensitivity], choices: list[_Choice], position: int
               ) -> tuple[dict[str, float], dict[str, float]]:
    """Each layer's chosen ratio and its predicted KL, walking the table back from bucket ``position``."""
    ratios: dict[str, float] = {}
    predicted: dict[str, float] = {}
    for curve, (options, steps, pick) in zip(reversed(curves), reversed(choices)):
        row = pick[position]
        ratios[curve.name] = float(options[row])
        predicted[curve.name] = float(predicted_loss(curve, options[row:row + 1])[0])
        position -= int(steps[row])
    return ratios, predicted
