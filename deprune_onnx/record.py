"""The PruneRecord: what happened while pruning, beside the PruningPlan's decisions.

The plan says what to prune and is all ``--plan`` needs; the record says what the steps found and did (PW
removal's before/after counts, 2:4 rows, the rewrite, the calibration refit's residuals, the allocation's
measured curves, the keep-zeros violations). ``PruneResult`` carries both, and the report
(report/build.py) renders both. Each step returns its part of the record; nothing here changes a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class AllocationRecord:
    """What ``--allocate`` measured and chose.

    Fields:
        summary: method, target_ratio, allocated_ratio (model-wide, fraction of DW weights pruned),
            predicted_kl_sum (nats, at ``temperature``), samples (calibration samples measured on), refit,
            measured_ratios, temperature (the KL is of the softmax at T, times T^2), held_out_by_image (each
            sample scored with a refit fitted without its image).
        layers: per DW layer name: measured_ratios, measured_kl (mean KL in nats at each, at the summary's
            temperature), chosen_ratio, predicted_kl, why.
    """

    summary: dict[str, Any]
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class CalibrationRecord:
    """What ``--calib`` used and what the refit achieved.

    Fields:
        images: the calibration image paths; views: views per image; samples: images x views; preprocess:
            the preset name; damp: the ridge damping; saliency: taps chosen by saliency; layers_refit: count.
        layers: per refit DW layer name: residual_before / residual_after (relative output error
            ||Y - Y_ref||^2 / ||Y_ref||^2 of that layer, before and after the refit), samples, damp, saliency.
        projections: the projection refit (on unless ``--no-calib-project``): per refit projection PW, in the
            order refit (each right after its DW layer): layer, positions, target (``conv output``, or the block
            output where the projection reaches a residual Add), residual_before, residual_after (relative to
            that target), damp; None without it (or when the refit was undone).
        model_check: the whole model's distance to the unpruned one on the calibration samples, unrefitted vs
            refitted (``recovery.model_check``: measure, unrefitted, refitted, samples, kept); a refit that made it
            worse is undone and ``kept`` says "unrefitted".
    """

    images: list[str]
    views: int
    samples: int
    preprocess: str
    damp: float
    saliency: bool
    layers_refit: int
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    projections: list[dict[str, Any]] | None = None
    model_check: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The report's top-level ``calibration`` entry (per-layer results go into the layer rows)."""
        summary = {"images": self.images, "views": self.views, "samples": self.samples,
                   "preprocess": self.preprocess, "damp": self.damp, "saliency": self.saliency,
                   "layers_refit": self.layers_refit}
        if self.projections is not None:
            summary["projections"] = self.projections
        if self.model_check is not None:
            summary["model_check"] = self.model_check
        return summary


@dataclass
class PruneRecord:
    """Everything the prune steps report, besides the plan.

    Fields:
        output_format / dtype: what was written (PruneOptions.output_format / dtype).
        pw: PW removal's report section (groups, channels, params and MACs before/after), or None.
        pw_nm24: one row per PW layer given 2:4 masks, or None.
        rewrite: one record per DW conv the plugin rewrite looked at (rewritten or why not), or None (dense).
        format_auto: ``--format auto``'s decision per pruned DW layer (trt.layer_choice.RewriteDecision), or None.
        keep_zeros: ``--keep-zeros`` findings (violations per layer, layers_with_violations), or None.
        calibration: CalibrationRecord, or None without ``--calib`` refit.
        allocation: AllocationRecord, or None without ``--allocate``.
        target_speedup: with ``--target-speedup``: the target, the speedup the speed model predicts for the
            written plan (``predicted``) and the model (dw/speed.py ``SpeedModel.summary``: description, unit,
            PW time before/after removal, each DW layer's time source); else None.
    """

    output_format: str
    dtype: str
    pw: dict[str, Any] | None = None
    pw_nm24: list[dict[str, Any]] | None = None
    rewrite: list[dict[str, Any]] | None = None
    format_auto: list[dict[str, Any]] | None = None
    keep_zeros: dict[str, Any] | None = None
    calibration: CalibrationRecord | None = None
    allocation: AllocationRecord | None = None
    target_speedup: dict[str, Any] | None = None
