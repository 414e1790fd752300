"""Accuracy you can see: images and presets, metrics, and batched ONNX Runtime evaluation.

``evaluate`` is the one call the ``eval``, ``sweep`` and ``prune --calib`` paths share: outputs of a model on an
ImageSet, top-1/top-5 against labels when the images have them, and agreement/KL/cosine against a reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from deprune_onnx.evaluation.images import ImageSet
from deprune_onnx.evaluation.metrics import AgreementMetrics, LabelMetrics, agreement_metrics, label_metrics
from deprune_onnx.evaluation.runner import ModelRunner


@dataclass
class Evaluation:
    """What ``eval`` reports for one model on one image set."""

    images: int
    views: int
    preset: str
    labels: LabelMetrics | None
    reference_labels: LabelMetrics | None
    agreement: AgreementMetrics | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images, "views": self.views, "samples": self.images * self.views,
            "preprocess": self.preset,
            "labels": self.labels.to_dict() if self.labels else None,
            "reference_labels": self.reference_labels.to_dict() if self.reference_labels else None,
            "agreement": self.agreement.to_dict() if self.agreement else None,
        }


def labelled(images: ImageSet, outputs: np.ndarray) -> LabelMetrics | None:
    """Top-1/top-5 when every image has a label inside the model's class range."""
    labels = images.sample_labels()
    if labels is None or not len(labels) or labels.min() < 0 or labels.max() >= outputs.shape[1]:
        return None
    return label_metrics(outputs, labels)


def evaluate_outputs(images: ImageSet, outputs: np.ndarray, reference_outputs: np.ndarray | None = None
                     ) -> Evaluation:
    return Evaluation(
        images=len(images.paths), views=images.views, preset=images.preset, labels=labelled(images, outputs),
        reference_labels=labelled(images, reference_outputs) if reference_outputs is not None else None,
        agreement=agreement_metrics(reference_outputs, outputs) if reference_outputs is not None else None)


def evaluate(runner: ModelRunner, images: ImageSet, reference: ModelRunner | None = None,
             progress: Callable[[int], None] | None = None) -> Evaluation:
    """Run ``runner`` (and ``reference``) over ``images`` and compute every metric that applies."""
    outputs = runner.run(images.inputs, progress)
    reference_outputs = reference.run(images.inputs, progress) if reference is not None else None
    return evaluate_outputs(images, outputs, reference_outputs)


__all__ = ["Evaluation", "ModelRunner", "evaluate", "evaluate_outputs", "labelled"]
