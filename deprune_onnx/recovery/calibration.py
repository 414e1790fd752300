"""Accuracy recovery without training, the pipeline's optional step (``prune --calib``, ``--allocate``).

The calibration images, and the sensitivity-aware choice of per-layer DW ratios. The refit itself lives in
refit.py, the sensitivity measurement and the allocation programme in allocation.py; this module only
turns the CLI's options into their inputs, so pipeline.py stays a chain of steps.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from deprune_onnx.analysis import ModelAnalysis
from deprune_onnx.dw.planner import DamageMeasure, resolve_layer_ratios
from deprune_onnx.options import CalibOptions, DWOptions

if TYPE_CHECKING:
    from deprune_onnx.dw.speed import SpeedModel
    from deprune_onnx.evaluation.images import ImageSet, Preset, PreprocessOptions

# Without --calib-crops, every calibration image gives enough views for this many samples (at most 10 each).
CALIB_TARGET_SAMPLES = 64
CALIB_MAX_AUTO_VIEWS = 10


def calibration_set(model: onnx.ModelProto, calib: CalibOptions) -> "ImageSet":
    """The preprocessed calibration samples: the first ``n`` images, ``crops`` views each, in the model's own
    input type (float16 for a float16 model)."""
    from deprune_onnx.evaluation.images import find_images, load_image_set, preprocessing_for
    from deprune_onnx.evaluation.runner import ModelRunner, image_input_dtype

    paths = find_images(calib.sources, "--calib")
    if calib.n is not None:  # >= 1 (options.check_calib_options)
        paths = paths[: calib.n]
    views = calib.crops or min(CALIB_MAX_AUTO_VIEWS, math.ceil(CALIB_TARGET_SAMPLES / len(paths)))
    preset = preprocessing_for(calib.preprocess, ModelRunner.image_input_shape(model), (model, "model"))
    samples = load_image_set(paths, preset, views)
    samples.inputs = samples.inputs.astype(image_input_dtype(model), copy=False)
    return samples


def _evenly(inputs: np.ndarray, count: int) -> np.ndarray:
    return inputs[_evenly_spaced(len(inputs), count)]


def _evenly_spaced(total: int, count: int) -> np.ndarray:
    """Indices of ``count`` samples evenly spaced over ``total`` (all of them when there are no more)."""
    if total <= count:
        return np.arange(total)
    return np.linspace(0, total - 1, count).round().astype(int)


def allocate_layer_ratios(model: onnx.ModelProto, analysis: ModelAnalysis, dw: DWOptions, calib: CalibOptions,
                          samples: np.ndarray, groups: np.ndarray | None = None, speed: "SpeedModel | None" = None
                          ) -> tuple[list[tuple[str, float]], dict[str, Any], dict[str, dict]]:
    """Per-layer ratios from measured sensitivity (``--allocate``): the ratios to plan with, the summary for
    the plan, and each layer's measured curve and choice. ``groups`` [N]: each sample's calibration image, so
    a refit is scored only on images it was not fitted on (allocation.measure_masks). ``speed``: the speed model
    of ``--target-speedup`` (dw/speed.py; None = the tile cost model)."""
    from deprune_onnx.recovery.allocation import (ALLOCATE_TEMPERATURE, allocate_for_speedup, allocate_ratios,
                                                  measure_sensitivity)
    from deprune_onnx.dw.speed import speed_model

    assert calib.allocate is not None  # the option rules (options.check_calib_options) ran in prune_model
    excluded = {name for name, ratio in resolve_layer_ratios([layer.name for layer in analysis.dw_layers],
                                                              dw).items() if ratio is None}
    names = [layer.name for layer in analysis.dw_layers if layer.name not in excluded]
    chosen = _evenly_spaced(len(samples), calib.allocate_samples)
    inputs = samples[chosen]
    curves = measure_sensitivity(model, analysis, dw.method, inputs, calib.allocate_ratios,
                                 refit=calib.refit, damp=calib.measure_damp, tile=dw.tile, layers=names,
                                 groups=None if groups is None else groups[chosen], temperature=ALLOCATE_TEMPERATURE)
    held_out = calib.refit and groups is not None and len(inputs) > 1
    shapes = {layer.name: (layer.out_channels, 1, *layer.kernel) for layer in analysis.dw_layers}
    if dw.target_speedup is not None:
        if speed is None:
            speed = speed_model(analysis, dw.tile)
        allocation = allocate_for_speedup(curves, shapes, speed, dw.target_speedup, dw.method, dw.tile)
        goal = f"predicted speedup ({speed.description}) at least {dw.target_speedup}x"
    else:
        allocation = allocate_ratios(curves, shapes, dw.dw_ratio, dw.method, dw.tile)
        goal = f"model-wide DW ratio {dw.dw_ratio}"
    refit = (" with a refit fitted without the sample's image" if held_out else " with refit") if calib.refit else ""
    why = (f"least total predicted KL at temperature {ALLOCATE_TEMPERATURE:g} (sum over layers, measured alone"
           f"{refit} on {len(inputs)} calibration samples) meeting {goal}")
    per_layer = {curve.name: {"measured_ratios": curve.ratios, "measured_kl": curve.kl,
                              "chosen_ratio": allocation.ratios[curve.name],
                              "predicted_kl": allocation.predicted[curve.name], "why": why} for curve in curves}
    if allocation.predicted_speedup is not None:
        for name, entry in per_layer.items():
            entry["predicted_speedup"] = allocation.predicted_speedup[name]
    summary = {"method": calib.allocate, "target_ratio": dw.dw_ratio if dw.target_speedup is None else None,
               "allocated_ratio": allocation.achieved_ratio, "predicted_kl_sum": allocation.predicted_total,
               "samples": int(len(inputs)), "refit": calib.refit, "measured_ratios": list(calib.allocate_ratios),
               "temperature": ALLOCATE_TEMPERATURE, "held_out_by_image": bool(held_out)}
    if dw.target_speedup is not None:
        summary.update({"target_speedup": dw.target_speedup, "speed_model": speed.description,
                        "predicted_dw_speedup": allocation.predicted_dw_speedup})
    return list(allocation.ratios.items()), summary, per_layer


def hsr_damage_measure(model: onnx.ModelProto, analysis: ModelAnalysis, calib: CalibOptions,
                       samples: np.ndarray) -> DamageMeasure:
    """``--hsr-rank damage`` with --calib: a candidate mask's expected damage is the mean KL of the model's output
    with that layer alone pruned (and refit, unless --no-refit), on ``--allocate-samples`` calibration samples."""
    from deprune_onnx.recovery.allocation import measure_masks

    inputs = _evenly(samples, calib.allocate_samples)
    return lambda requests: measure_masks(model, analysis, inputs, requests, calib.refit, calib.measure_damp,
                                          "hsr damage")
