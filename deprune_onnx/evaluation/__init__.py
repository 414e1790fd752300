"""Accuracy you can see: images and presets, metrics, and batched ONNX Runtime evaluation.

``evaluate`` is the one call the ``eval``, ``sweep`` and ``prune --calib`` paths share: outputs of a model on an
ImageSet, the kind of its output (``output_kind``), and the metrics that fit it: for class scores top-1/top-5
against labels when the images have them and agreement/KL/cosine against a reference; for every kind the
relative L2 error, cosine and max abs error against a reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from deprune_onnx.errors import DepruneError
from deprune_onnx.evaluation.images import ImageSet
from deprune_onnx.evaluation.metrics import (AgreementMetrics, ErrorMetrics, LabelMetrics, agreement_metrics,
                                             error_metrics, label_metrics)
from deprune_onnx.evaluation.output_kind import CLASS_SCORES, output_kind
from deprune_onnx.evaluation.runner import ModelRunner


@dataclass
class Evaluation:
    """What ``eval`` reports for one model on one image set."""

    images: int
    views: int
    preset: str
    preprocessing: dict[str, Any] | None
    output_kind: str                       # class_scores | sequence | dense (deprune_onnx.evaluation.output_kind)
    output_shape: list[int]                # one sample's output shape
    labels: LabelMetrics | None
    reference_labels: LabelMetrics | None
    agreement: AgreementMetrics | None     # class scores only
    errors: ErrorMetrics | None            # any kind, against a reference

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images, "views": self.views, "samples": self.images * self.views,
            "preprocess": self.preset, "preprocessing": self.preprocessing,
            "output_kind": self.output_kind, "output_shape": self.output_shape,
            "labels": self.labels.to_dict() if self.labels else None,
            "reference_labels": self.reference_labels.to_dict() if self.reference_labels else None,
            "agreement": self.agreement.to_dict() if self.agreement else None,
            "errors": self.errors.to_dict() if self.errors else None,
        }


def labelled(images: ImageSet, outputs: np.ndarray) -> LabelMetrics | None:
    """Top-1/top-5 when the outputs are class scores and every image has a label inside the model's class range."""
    labels = images.sample_labels()
    if output_kind(outputs.shape) != CLASS_SCORES:
        return None
    outputs = outputs.reshape(len(outputs), -1)
    if labels is None or not len(labels) or labels.min() < 0 or labels.max() >= outputs.shape[1]:
        return None
    return label_metrics(outputs, labels)


def evaluate_outputs(images: ImageSet, outputs: np.ndarray, reference_outputs: np.ndarray | None = None
                     ) -> Evaluation:
    kind = output_kind(outputs.shape)
    compared = reference_outputs is not None
    if compared and reference_outputs.shape[1:] != outputs.shape[1:]:
        raise DepruneError(f"the reference's output [N, {', '.join(map(str, reference_outputs.shape[1:]))}] "
                           f"differs from the model's [N, {', '.join(map(str, outputs.shape[1:]))}]")
    return Evaluation(
        images=len(images.paths), views=images.views, preset=images.preset,
        preprocessing=images.preprocessing.describe() if images.preprocessing else None,
        output_kind=kind, output_shape=[int(d) for d in outputs.shape[1:]], labels=labelled(images, outputs),
        reference_labels=labelled(images, reference_outputs) if compared else None,
        agreement=agreement_metrics(reference_outputs.reshape(len(reference_outputs), -1),
                                    outputs.reshape(len(outputs), -1))
        if compared and kind == CLASS_SCORES else None,
        errors=error_metrics(reference_outputs, outputs) if compared else None)


def evaluate(runner: ModelRunner, images: ImageSet, reference: ModelRunner | None = None,
             progress: Callable[[int], None] | None = None) -> Evaluation:
    """Run ``runner`` (and ``reference``) over ``images`` and compute every metric that applies."""
    outputs = runner.run(images.inputs, progress)
    reference_outputs = reference.run(images.inputs, progress) if reference is not None else None
    return evaluate_outputs(images, outputs, reference_outputs)


__all__ = ["Evaluation", "ModelRunner", "evaluate", "evaluate_outputs", "labelled"]
