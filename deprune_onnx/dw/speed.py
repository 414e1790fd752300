"""Predicted time of the pruned layers for ``--target-speedup``: the tile cost model, measured per-layer timings
(``--hsr-timings`` with a ``deprune-onnx tune`` file), and the PW convs' FLOPs/bytes model when PW channels are
removed (the target then covers the DSConv blocks, DW + PW, not the DW layers alone).

A DW layer's time is a function of its slowest sub-GEMM's tile steps S = max_g ceil(K_g / T) (HSR's tile cost
model): ``per_step * S`` when pruned, ``dense_time`` when it keeps every weight (it stays a standard Conv). The
three sources, per layer:
- tile model (no timings, no PW removal): per_step = G * H_out * W_out (G sub-GEMMs), in tile-step units; this is
  the report's ``predicted_dw_speedup``, so without timings or PW removal nothing changes;
- measured: a tune file's layer (same dtype): dense_time = the native conv's microseconds, per_step = our
  kernel's microseconds / the tile steps of the mask it was timed at (kept per full sub-GEMM estimated as
  kept_taps * min(C, 32) / C, BWT's balanced count), so other ratios scale by the tile model;
  a DW layer the file does not time gets the tile model times the median us-per-unit of the timed layers;
- roofline (PW removed, no timings): the layer's dense time is max(FLOPs / peak, bytes / bandwidth) at batch 1
  (input and output read/written once, weights once), pruned it scales by the tile model.
PW convs (only when PW channels were removed): the same roofline, summed over every 1x1 conv before and after
removal; their time is fixed by ``--pw-ratio``, so the DW ratios must make up the rest of the target.
The roofline's constants are an H200's (``BANDWIDTH``, ``PEAK_FLOPS``); only ratios of times enter a speedup,
but the DW/PW balance does depend on them: a prediction, not a measurement.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from deprune_onnx.analysis import ConvLayer, ModelAnalysis
from deprune_onnx.errors import DepruneError
from deprune_onnx.op.spec import SUBGEMM_CHANNELS

if TYPE_CHECKING:
    from deprune_onnx.trt.layer_choice import Timings

# H200: device-to-device copy bandwidth measured by bench/gpu (trt/emulated.py), bytes/s; NVIDIA's peak dense
# FLOP/s for FP32 (CUDA cores) and FP16 (tensor cores).
BANDWIDTH = 4.3e12
PEAK_FLOPS = {"float32": 67e12, "float16": 989e12}
ELEMENT_BYTES = {"float32": 4, "float16": 2}


def dense_steps(layer: ConvLayer, tile: int) -> int:
    """Tile steps of a full sub-GEMM of an unpruned DW layer: ceil(min(C, 32) * kh * kw / T)."""
    return -(-min(layer.out_channels, SUBGEMM_CHANNELS) * layer.kernel[0] * layer.kernel[1] // tile)


def roofline_us(layer: ConvLayer, dtype: str) -> float:
    """max(FLOPs / peak, bytes / bandwidth) of one conv at batch 1, microseconds (unknown sizes count as 1x1)."""
    element = ELEMENT_BYTES[dtype]
    pixels_in = _pixels(layer.input_shape)
    pixels_out = _pixels(layer.output_shape)
    macs = layer.macs if layer.macs is not None else layer.params * pixels_out
    moved = element * (layer.in_channels * pixels_in + layer.out_channels * pixels_out + layer.params)
    return 1e6 * max(2.0 * macs / PEAK_FLOPS[dtype], moved / BANDWIDTH)


def _pixels(shape) -> int:
    if shape is not None and len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
        return int(shape[2]) * int(shape[3])
    return 1


@dataclass
class SpeedModel:
    """Per DW layer: ``dense_time``, ``per_step`` (time per tile step of the slowest sub-GEMM when pruned),
    ``dense_steps`` and ``source``; ``pw_before`` / ``pw_after``: the PW convs' total time before and after PW
    removal (0 when nothing was removed); ``dw_before``: the DW layers' total dense time before PW removal (which
    may have removed DW channels too), None = the sum of ``dense_time``; ``unit``: "tile steps x sub-GEMMs x
    output pixels" or "us"."""

    unit: str
    dense_time: dict[str, float]
    per_step: dict[str, float]
    dense_steps: dict[str, int]
    source: dict[str, str]
    pw_before: float = 0.0
    pw_after: float = 0.0
    description: str = "tile cost model"
    timed: list[str] = field(default_factory=list)
    dw_before: float | None = None

    @property
    def dense_total(self) -> float:
        """The unpruned model's time: every DW layer dense before PW removal, plus the PW convs before it."""
        return (sum(self.dense_time.values()) if self.dw_before is None else self.dw_before) + self.pw_before

    def time(self, name: str, steps: np.ndarray) -> np.ndarray:
        """The layer's time at each tile-step count (dense time where nothing is pruned)."""
        steps = np.asarray(steps)
        return np.where(steps >= self.dense_steps[name], self.dense_time[name], self.per_step[name] * steps)

    def speedup(self, steps: dict[str, int]) -> float | None:
        """Predicted speedup, ``dense_total`` over pruned; layers not in ``steps`` run dense. None when nothing
        is left to run."""
        dense = self.dense_total
        pruned = sum(float(self.time(name, np.array(steps.get(name, self.dense_steps[name]))))
                     for name in self.dense_time) + self.pw_after
        return dense / pruned if pruned > 0 else None

    def summary(self) -> dict:
        """What the report records about the model: unit, description, each layer's source, PW times."""
        return {"model": self.description, "unit": self.unit, "pw_time_before": self.pw_before,
                "pw_time_after": self.pw_after, "dw_time_dense": self.dense_total - self.pw_before,
                "layer_source": dict(self.source)}


def speed_model(analysis: ModelAnalysis, tile: int, timings: "Timings | None" = None, dtype: str = "float32",
                pw_layers: tuple[list[ConvLayer], list[ConvLayer]] | None = None,
                dw_before: list[ConvLayer] | None = None) -> SpeedModel:
    """The speed model of ``analysis``'s DW layers (module docstring). ``pw_layers``: the PW convs before and
    after PW removal, and ``dw_before`` the DW layers before it, only when channels were removed (their dense
    time is the roofline's, times the median measured/roofline ratio of the timed layers with ``timings``).
    Errors: a timings file measured in another dtype, or one that times no DW layer of the model."""
    if timings is not None and timings.dtype != dtype:
        raise DepruneError(f"--hsr-timings {timings.path}: measured in {timings.dtype}, this prune writes {dtype}; "
                           f"run `deprune-onnx tune` on a {dtype} model")
    layers = analysis.dw_layers
    steps = {layer.name: dense_steps(layer, tile) for layer in layers}
    if pw_layers is None:
        dense = {layer.name: float(layer.subgemms * _pixels(layer.output_shape) * steps[layer.name])
                 for layer in layers}
        unit, base_source, description = "tile steps x sub-GEMMs x output pixels", "tile model", "tile cost model"
    else:
        dense = {layer.name: roofline_us(layer, dtype) for layer in layers}
        unit, base_source = "us", "roofline x tile model"
        description = "DW + PW (DSConv blocks): DW by the roofline scaled by the tile model, PW by the roofline"
    per_step = {name: dense[name] / steps[name] for name in dense}
    source = {name: base_source for name in dense}
    timed = []
    if timings is not None:
        by_name = {layer.name: layer for layer in layers}
        dense_scale, step_scale = [], []
        for name, timing in timings.layers.items():
            layer = by_name.get(name)
            if layer is None or not timing.ok:
                continue
            channels = layer.out_channels
            kept_full = timing.kept_taps * min(channels, SUBGEMM_CHANNELS) / channels
            measured_steps = max(1, int(np.ceil(round(kept_full, 6) / tile)))
            dense_scale.append(timing.native_us / dense[name])
            step_scale.append(timing.ours_us / measured_steps / per_step[name])
            dense[name], per_step[name] = timing.native_us, timing.ours_us / measured_steps
            source[name] = f"measured ({timings.path})"
            timed.append(name)
        if not timed:
            raise DepruneError(f"--hsr-timings {timings.path}: times no DW layer of this model (by node name) "
                               "whose kernel passed its check")
        for name in dense:
            if name not in timed:
                dense[name] *= float(np.median(dense_scale))
                per_step[name] *= float(np.median(step_scale))
                source[name] = f"{base_source} x the median us per unit of the timed layers"
        if pw_layers is None:
            unit, description = "us", f"measured DW timings ({timings.path})"
        else:
            description = f"DW + PW (DSConv blocks): DW measured ({timings.path}), PW by the roofline"
    pw_before = pw_after = 0.0
    before = None
    if pw_layers is not None:
        pw_before = sum(roofline_us(layer, dtype) for layer in pw_layers[0])
        pw_after = sum(roofline_us(layer, dtype) for layer in pw_layers[1])
        scale = float(np.median(dense_scale)) if timed else 1.0
        before = scale * sum(roofline_us(layer, dtype) for layer in (dw_before if dw_before is not None else layers))
    return SpeedModel(unit, dense, per_step, steps, source, pw_before, pw_after, description, timed, before)
