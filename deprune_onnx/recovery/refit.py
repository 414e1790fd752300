"""Calibrated reconstruction: refit every pruned DW channel's kept weights and bias by least squares.

Why it works: a DW channel is a tiny linear model, y = sum_p w_p x_p + b over its kh*kw taps. After pruning, the
kept taps and the bias can be re-solved so that the channel reproduces what the unpruned model computed, which
recovers most of what one-shot pruning loses, without training and without touching the structure (the masks,
hence every DCP/BWT/HSR rule, stay as planned; pruned taps stay exactly zero).

What is fitted: layers in graph order. For layer l the input X is the *partly reconstructed* model's input to l
(earlier layers already pruned and refit), the target Y is the *unpruned* model's output of l (the conv output,
before its activation), over every output pixel of every calibration sample. Per channel that is a
(kh*kw + 1)-unknown least-squares problem; its normal equations G w = B (G = [P 1]^T [P 1]) are accumulated over
the samples and solved for all channels at once with a batched ``numpy.linalg.solve``. Damping: lambda =
``damp`` * mean diagonal of the channel's tap Gram, pulling towards the original weights, so a channel with
little signal keeps its weights. Channels are independent, so the solve is exact and cheap.

Damping chosen by cross-validation (``damp=None``, ``--calib-damp auto``): the calibration samples are split into
folds by image (views of one image are near copies, so they never straddle train and validation); the normal
equations are sums over samples, so each fold's train system is the total minus the fold's. Every damping of
``DAMP_GRID`` is fitted on each train split and scored on its held-out fold; the layer takes the damping with the
least validation residual, refit on all samples. If even that validation residual is not below the unrefitted
(masked original) weights', the layer keeps its unrefitted weights: a refit that does not generalise is not used.

Layers with nothing pruned (ratio 0, excluded) are left bit-exact. A full forward pass of both models is run
once, in pieces (``StagedForward``), not once per layer.

Optional (``saliency=True``): before refitting, the kept taps are re-chosen by the second-order saliency
w_p^2 / [H^-1]_pp (H = the channel's damped Gram) instead of |w|, keeping exactly the planned K per sub-GEMM
(per layer for dcp), so the structure is still unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from deprune_onnx.analysis import ConvLayer, ModelAnalysis, conv_output_hw
from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.dw.masks import keep_top_per_subgemm
from deprune_onnx.plan import DWLayerPlan
from deprune_onnx.progress import progress
from deprune_onnx.recovery.staged import StagedForward

if TYPE_CHECKING:
    from deprune_onnx.recovery.pw_refit import ProjectionRefit

DEFAULT_DAMP = 0.01
# Dampings --calib-damp auto cross-validates, relative to each channel's mean tap energy.
DAMP_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
# Cross-validation folds (by calibration image; by sample when there is one image).
CV_FOLDS = 5
# Patch matrices are built in pieces of about this many float32 values, to bound memory.
_PATCH_BUDGET = 24_000_000
SALIENCY_METHODS = ("dcp", "b", "bh")


@dataclass
class PatchStats:
    """Normal equations of every channel of one DW layer: G [C, k+1, k+1], B [C, k+1], yy [C] (k = kh*kw; the
    last unknown is the bias)."""

    gram: np.ndarray
    cross: np.ndarray
    target_energy: np.ndarray
    samples: int

    def residual(self, w: np.ndarray) -> np.ndarray:
        """Per-channel squared error ||[P 1] w - y||^2 of weights+bias ``w`` [C, k+1]."""
        quadratic = np.einsum("ck,ckl,cl->c", w, self.gram, w)
        return quadratic - 2.0 * np.einsum("ck,ck->c", w, self.cross) + self.target_energy

    def __add__(self, other: "PatchStats") -> "PatchStats":
        return PatchStats(self.gram + other.gram, self.cross + other.cross,
                          self.target_energy + other.target_energy, self.samples + other.samples)

    def __sub__(self, other: "PatchStats") -> "PatchStats":
        return PatchStats(self.gram - other.gram, self.cross - other.cross,
                          self.target_energy - other.target_energy, self.samples - other.samples)


def dw_design(x: np.ndarray, layer: ConvLayer) -> np.ndarray:
    """Design matrices of a DW conv: [N, C_out, kh*kw + 1, H_out*W_out] float32, one row per tap (the input
    pixels that tap multiplies, output channel o reading input channel o // m) plus a row of ones for the bias.

    Built tap by tap (kh*kw strided slices), with the pixel axis last so the Gram matrices are plain batched
    matrix products."""
    kh, kw = layer.kernel
    (sh, sw), (dh, dw) = layer.strides, layer.dilations
    top, left, bottom, right = layer.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    if layer.depth_multiplier > 1:
        padded = np.repeat(padded, layer.depth_multiplier, axis=1)
    out_h, out_w = conv_output_hw(x.shape[2:], layer.kernel, layer.strides, layer.pads, layer.dilations)
    design = np.empty((padded.shape[0], padded.shape[1], kh * kw + 1, out_h * out_w), dtype=np.float32)
    for tap in range(kh * kw):
        ky, kx = divmod(tap, kw)
        rows = slice(ky * dh, ky * dh + sh * (out_h - 1) + 1, sh)
        cols = slice(kx * dw, kx * dw + sw * (out_w - 1) + 1, sw)
        design[:, :, tap] = padded[:, :, rows, cols].reshape(padded.shape[0], padded.shape[1], -1)
    design[:, :, -1] = 1.0
    return design


def patch_stats(x: np.ndarray, y: np.ndarray | None, layer: ConvLayer) -> PatchStats:
    """Accumulate G = [P 1]^T [P 1], B = [P 1]^T y and y^T y per channel over samples, in float64
    (B and y^T y stay zero when ``y`` is None: see ``reference_stats``)."""
    channels, taps = x.shape[1] * layer.depth_multiplier, layer.kernel[0] * layer.kernel[1]
    gram = np.zeros((channels, taps + 1, taps + 1))
    cross = np.zeros((channels, taps + 1))
    energy = np.zeros(channels)
    per_sample = channels * int(np.prod(x.shape[2:])) * (taps + 1)
    step = max(1, _PATCH_BUDGET // max(per_sample, 1))
    for start in range(0, len(x), step):
        design = dw_design(x[start:start + step], layer)                       # [n, C, k+1, HW]
        gram += np.matmul(design, design.transpose(0, 1, 3, 2)).sum(axis=0, dtype=np.float64)
        if y is not None:
            target = y[start:start + step].reshape(design.shape[0], channels, -1, 1)  # [n, C, HW, 1]
            cross += np.matmul(design, target)[..., 0].sum(axis=0, dtype=np.float64)
            energy += np.einsum("nchw,nchw->c", target, target, dtype=np.float64)
    return PatchStats(gram, cross, energy, len(x))


def reference_stats(x: np.ndarray, layer: ConvLayer, w0: np.ndarray) -> PatchStats:
    """Normal equations when the input is the unpruned one, so the target is the conv's own output [P 1] w0:
    B = G w0 and y^T y = w0^T G w0, no output tensor needed (``w0`` [C, k+1] = weights and bias)."""
    stats = patch_stats(x, None, layer)
    cross = np.einsum("ckl,cl->ck", stats.gram, w0)
    return PatchStats(stats.gram, cross, np.einsum("ck,ck->c", w0, cross), stats.samples)


def damped_system(stats: PatchStats, w0: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(G + lambda I, B + lambda w0), lambda = damp * mean tap diagonal per channel (tiny floor for dead inputs)."""
    taps = stats.gram.shape[1] - 1
    diagonal = np.einsum("ckk->ck", stats.gram)[:, :taps].mean(axis=1)
    lam = damp * diagonal + 1e-12 * (1.0 + diagonal)
    matrix = stats.gram + lam[:, None, None] * np.eye(taps + 1)
    return matrix, stats.cross + lam[:, None] * w0


def refit_channels(stats: PatchStats, w0: np.ndarray, keep: np.ndarray, damp: float = DEFAULT_DAMP) -> np.ndarray:
    """Least-squares weights+bias [C, k+1] with the pruned taps (``keep`` [C, k] False) fixed to exactly 0."""
    matrix, rhs = damped_system(stats, w0, damp)
    free = np.concatenate([keep, np.ones((keep.shape[0], 1), dtype=bool)], axis=1)
    pair = free[:, :, None] & free[:, None, :]
    matrix = np.where(pair, matrix, 0.0) + np.einsum("ck,kl->ckl", (~free).astype(np.float64), np.eye(free.shape[1]))
    rhs = np.where(free, rhs, 0.0)
    solution = np.linalg.solve(matrix, rhs[..., None])[..., 0]
    return np.where(free, solution, 0.0)


def fold_ids(groups: np.ndarray | None, samples: int, folds: int = CV_FOLDS) -> np.ndarray:
    """Fold of every sample: by group (calibration image) when there are at least two, else by sample."""
    if groups is not None and len(np.unique(groups)) >= 2:
        _, dense = np.unique(groups, return_inverse=True)
        return dense % min(folds, int(dense.max()) + 1)
    return np.arange(samples) % max(1, min(folds, samples))


@dataclass
class CrossValidated:
    """The damping cross-validation chose, and train/validation residuals (relative to the target energy)."""

    damp: float
    validation_before: float   # unrefitted (masked original) weights on held-out folds
    validation_after: float    # the refit at ``damp``, fitted without the fold it is scored on
    validation_by_damp: dict[float, float]


def cross_validate_damp(folds: list[PatchStats], w0: np.ndarray, keep: np.ndarray,
                        grid: tuple[float, ...] = DAMP_GRID) -> CrossValidated:
    """Choose the damping of ``refit_channels`` by K-fold cross-validation over per-fold normal equations."""
    total = folds[0]
    for fold in folds[1:]:
        total = total + fold
    energy = max(float(total.target_energy.sum()), 1e-30)
    before = np.where(np.concatenate([keep, np.ones((len(w0), 1), bool)], axis=1), w0, 0.0)
    scores = {}
    for damp in grid:
        scores[damp] = sum(float(fold.residual(refit_channels(total - fold, w0, keep, damp)).sum())
                           for fold in folds) / energy
    damp = min(grid, key=lambda d: (scores[d], d))
    return CrossValidated(damp, float(total.residual(before).sum()) / energy, scores[damp], scores)


def saliency_keep(stats: PatchStats, w0: np.ndarray, plan: DWLayerPlan, damp: float = DEFAULT_DAMP
                  ) -> np.ndarray:
    """Keep mask [C, 1, kh, kw] by OBS saliency w^2 / [H^-1]_pp, with the plan's K per sub-GEMM (dcp: per layer)."""
    matrix, _ = damped_system(stats, w0, damp)
    inverse_diagonal = np.einsum("ckk->ck", np.linalg.inv(matrix))[:, :-1]
    saliency = (np.square(w0[:, :-1]) / inverse_diagonal).reshape(plan.shape)
    kept = np.asarray(plan.kept_per_subgemm)
    if plan.method == "dcp":
        return keep_top_per_subgemm(saliency, np.array([kept.sum()]), width=plan.shape[0])
    return keep_top_per_subgemm(saliency, kept)


class ParameterWriter:
    """Writes refit weights and biases into the model: in place when the initializer is this conv's alone, under
    a new name otherwise (a shared tensor keeps its other users' values)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        index = GraphIndex(model.graph)
        self.users = {name: len(nodes) for name, nodes in index.consumers.items()}
        self.position = {t.name: i for i, t in enumerate(model.graph.initializer)}
        self.graph_inputs = {v.name for v in model.graph.input}
        self.node_position = index.node_position

    def current(self, node_name: str, slot: int) -> np.ndarray | None:
        """The value the node's input ``slot`` holds now, when it is an initializer (None otherwise)."""
        node = self.model.graph.node[self.node_position[node_name]]
        name = node.input[slot] if len(node.input) > slot else ""
        if name not in self.position:
            return None
        return numpy_helper.to_array(self.model.graph.initializer[self.position[name]])

    def write(self, node_name: str, slot: int, value: np.ndarray, suffix: str) -> None:
        node = self.model.graph.node[self.node_position[node_name]]
        name = node.input[slot] if len(node.input) > slot else ""
        if name and name in self.position and self.users.get(name, 0) == 1 and name not in self.graph_inputs:
            self.model.graph.initializer[self.position[name]].CopyFrom(numpy_helper.from_array(value, name))
            return
        new_name = f"{node_name}.{suffix}"
        while new_name in self.position or new_name in self.users:
            new_name += "_"
        self.model.graph.initializer.append(numpy_helper.from_array(value, new_name))
        self.position[new_name] = len(self.model.graph.initializer) - 1
        self.users[new_name] = 1
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = new_name


def original_parameters(index: GraphIndex, layer: ConvLayer) -> tuple[np.ndarray, np.ndarray]:
    """A DW layer's weight and bias (zeros when it has none)."""
    weight = index.constant(layer.weight)
    bias = index.constant(layer.bias) if layer.bias else None
    if weight is None:
        raise DepruneError(f"calibration: weight of DW layer '{layer.name}' is not a constant")
    if bias is None:
        bias = np.zeros(weight.shape[0], dtype=weight.dtype)
    return weight, bias


def stacked(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[C, kh*kw + 1] float64: each channel's taps, then its bias (the unknowns of the per-channel solve)."""
    return np.concatenate([weight.reshape(weight.shape[0], -1), bias[:, None]], axis=1).astype(np.float64)


@dataclass
class RefitRecord:
    """What the refit did: one entry per pruned layer (``layer``, ``residual_before``/``residual_after``: relative
    output error ||Y - Y_ref||^2 / ||Y_ref||^2, ``samples``, ``damp``, ``saliency``, ``refit``; with
    cross-validation ``validation_before``/``validation_after``), and the keep masks
    ``saliency`` chose per layer name (empty without it; the caller puts them into a new plan)."""

    layers: list[dict]
    masks: dict[str, np.ndarray]


def reconstruct(model: onnx.ModelProto, reference: onnx.ModelProto, analysis: ModelAnalysis,
                plans: Sequence[DWLayerPlan], inputs: np.ndarray, damp: float | None = DEFAULT_DAMP,
                saliency: bool = False, *, in_place: bool = False, groups: np.ndarray | None = None,
                projections: "ProjectionRefit | None" = None) -> tuple[onnx.ModelProto, RefitRecord]:
    """Refit the pruned DW layers of ``model`` (masks applied) against the unpruned ``reference``: a copy of
    ``model``, or ``model`` itself with ``in_place=True``.

    ``inputs`` are the preprocessed calibration samples [N, ...]; ``groups`` [N] their image (cross-validation
    folds). ``damp`` None chooses the damping per layer by cross-validation and keeps the unrefitted weights of a
    layer whose validation residual the refit does not lower (module docstring); its records then also hold the
    held-out residuals and ``refit``. ``projections`` (the projection refit, ``CalibOptions.project``): refits
    each pruned layer's projection PW right after the layer, into the model being refit (``ProjectionRefit``,
    built on ``reference``), so later layers are fitted on the corrected blocks' output. Returns the model and
    the RefitRecord. ``plans`` are not changed.
    """
    if damp is not None and (damp < 0 or not np.isfinite(damp)):
        raise DepruneError(f"--calib-damp {damp}: must be a finite number >= 0 (or auto)")
    folds = fold_ids(groups, len(inputs)) if damp is None else None
    if folds is not None and folds.max() < 1:
        folds = None  # one sample: nothing to hold out
    if not in_place:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    layers = analysis.dw_by_name()
    index = GraphIndex(reference.graph)
    input_name = analysis_input(reference)
    pruned_run = StagedForward(model, {input_name: inputs})
    reference_run = StagedForward(reference, {input_name: inputs})
    writer = ParameterWriter(model)
    records: list[dict] = []
    chosen: dict[str, np.ndarray] = {}
    for plan in progress(plans, "refit", unit="layer"):
        keep = plan.keep_mask()
        if plan.method == "none" or keep.all():
            continue
        if saliency and plan.method not in SALIENCY_METHODS:
            raise DepruneError(f"--calib-saliency: not available with --method {plan.method} (only "
                               f"{', '.join(SALIENCY_METHODS)})")
        layer = layers[plan.name]
        weight, bias = original_parameters(index, layer)
        target = reference_run.advance([layer.output])[layer.output]
        x = pruned_run.advance([layer.input])[layer.input]
        w0 = stacked(weight, bias)
        if folds is None:
            stats = patch_stats(x, target, layer)
            fold_stats = None
        else:
            fold_stats = [patch_stats(x[folds == f], target[folds == f], layer) for f in range(folds.max() + 1)]
            stats = fold_stats[0]
            for fold in fold_stats[1:]:
                stats = stats + fold
        layer_damp = damp if damp is not None else DEFAULT_DAMP
        if saliency:
            keep = chosen[plan.name] = saliency_keep(stats, w0, plan, layer_damp)
        flat_keep = keep.reshape(keep.shape[0], -1)
        before = np.where(np.concatenate([flat_keep, np.ones((len(w0), 1), bool)], axis=1), w0, 0.0)
        record: dict = {"samples": int(stats.samples), "saliency": bool(saliency)}
        refit = True
        if fold_stats is not None:
            cv = cross_validate_damp(fold_stats, w0, flat_keep)
            layer_damp = cv.damp
            refit = cv.validation_after < cv.validation_before
            record.update({"damp_choice": f"cross-validation, {len(fold_stats)} folds by image",
                           "validation_before": cv.validation_before, "validation_after": cv.validation_after,
                           "validation_by_damp": {str(d): v for d, v in cv.validation_by_damp.items()}})
        fitted = refit_channels(stats, w0, flat_keep, layer_damp) if refit else before
        energy = max(float(stats.target_energy.sum()), 1e-30)
        record.update({"residual_before": float(stats.residual(before).sum() / energy),
                       "residual_after": float(stats.residual(fitted).sum() / energy),
                       "damp": layer_damp, "refit": refit})
        if not refit:
            record["note"] = "unrefitted: the refit did not lower the held-out residual"
        writer.write(plan.name, 1, fitted[:, :-1].reshape(weight.shape).astype(weight.dtype), "refit_weight")
        writer.write(plan.name, 2, fitted[:, -1].astype(bias.dtype), "refit_bias")
        records.append({"layer": plan.name, **record})
        if projections is not None:
            projections.after_dw(plan.name, pruned_run, reference_run, writer)
    return model, RefitRecord(records, chosen)


def analysis_input(model: onnx.ModelProto) -> str:
    """The model's one non-initializer input (the image)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v.name for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise DepruneError(f"calibration needs a model with one image input; this one has {len(inputs)} inputs")
    return inputs[0]
