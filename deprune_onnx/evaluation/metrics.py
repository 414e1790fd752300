"""Accuracy against labels and agreement with a reference model, from model outputs alone.

Outputs may be logits or probabilities (the PaddleOCR models end in Softmax): both are turned into
log-probabilities first, so every metric means the same for either kind of model.

- top-1 / top-5: the label is among the 1 / 5 highest outputs.
- agreement: the model's top-1 class equals the reference's.
- KL: mean over samples of KL(reference || model) = sum p_ref (log p_ref - log p_model), in nats.
- logit cosine: cosine similarity of the centred logits (log-probabilities minus their mean, which equals raw
  logits minus their mean), mean over samples.

Those are class metrics, for outputs that are class scores (``deprune_onnx.evaluation.output_kind``). Every kind
of output (maps, sequences, class scores) also gets error metrics against the reference, per sample on the
flattened output, then averaged:

- relative L2 error: ||model - reference|| / ||reference|| (0 when both are 0, inf when only the reference is).
- cosine: cosine similarity of the raw outputs (1 when both are 0).
- max abs error: the largest |model - reference| over all samples and elements.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Floor for probabilities before the log, so a class a Softmax model rounds to 0 gives a large, finite KL.
_PROBABILITY_FLOOR = 1e-12


def looks_like_probabilities(outputs: np.ndarray) -> bool:
    """True when every row is non-negative and sums to 1 (a model that ends in Softmax)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    return bool(outputs.size and outputs.min() >= 0.0 and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))


def log_probabilities(outputs: np.ndarray, probabilities: bool | None = None) -> np.ndarray:
    """[N, classes] log-softmax of logits, or the log of probabilities (detected when ``probabilities`` is None)."""
    outputs = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if probabilities is None:
        probabilities = looks_like_probabilities(outputs)
    if probabilities:
        return np.log(np.maximum(outputs, _PROBABILITY_FLOOR))
    shifted = outputs - outputs.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def topk_hits(outputs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per sample: is the label among the k highest outputs."""
    outputs = np.asarray(outputs).reshape(len(outputs), -1)
    k = min(k, outputs.shape[1])
    top = np.argpartition(-outputs, k - 1, axis=1)[:, :k]
    return (top == np.asarray(labels)[:, None]).any(axis=1)


def kl_divergence(reference: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Per-sample KL(reference || model) from log-probabilities; >= 0 (rounding can make a sum of near-equal terms
    slightly negative, printed as -0.0000)."""
    return np.maximum(np.sum(np.exp(reference) * (reference - model), axis=-1), 0.0)


def logit_cosine(reference: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of centred log-probabilities."""
    a = reference - reference.mean(axis=-1, keepdims=True)
    b = model - model.mean(axis=-1, keepdims=True)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(norms > 0, np.sum(a * b, axis=-1) / np.where(norms > 0, norms, 1.0), 1.0)


@dataclass
class AgreementMetrics:
    """A model against its reference over the same samples."""

    samples: int
    agreement: float      # fraction of samples whose top-1 equals the reference's
    kl_mean: float
    kl_max: float
    cosine_mean: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement_metrics(reference_outputs: np.ndarray, model_outputs: np.ndarray) -> AgreementMetrics:
    """Agreement, KL and cosine of ``model_outputs`` against ``reference_outputs`` ([N, classes] each)."""
    if reference_outputs.shape != model_outputs.shape:
        raise ValueError(f"output shapes differ: {reference_outputs.shape} vs {model_outputs.shape}")
    ref = log_probabilities(reference_outputs)
    mod = log_probabilities(model_outputs)
    kl = kl_divergence(ref, mod)
    return AgreementMetrics(samples=len(ref), agreement=float(np.mean(ref.argmax(-1) == mod.argmax(-1))),
                            kl_mean=float(kl.mean()), kl_max=float(kl.max()),
                            cosine_mean=float(logit_cosine(ref, mod).mean()))


@dataclass
class LabelMetrics:
    samples: int
    top1: float
    top5: float | None    # None when the model has fewer than 5 classes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_metrics(outputs: np.ndarray, labels: np.ndarray) -> LabelMetrics:
    outputs = np.asarray(outputs).reshape(len(outputs), -1)
    top5 = float(topk_hits(outputs, labels, 5).mean()) if outputs.shape[1] >= 5 else None
    return LabelMetrics(samples=len(outputs), top1=float(topk_hits(outputs, labels, 1).mean()), top5=top5)


@dataclass
class ErrorMetrics:
    """A model's raw outputs against its reference's over the same samples (any output kind)."""

    samples: int
    rel_l2_mean: float
    rel_l2_max: float
    cosine_mean: float
    max_abs: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def error_metrics(reference_outputs: np.ndarray, model_outputs: np.ndarray) -> ErrorMetrics:
    """Relative L2 error, cosine and max abs error of ``model_outputs`` against ``reference_outputs`` [N, ...]."""
    if reference_outputs.shape != model_outputs.shape:
        raise ValueError(f"output shapes differ: {reference_outputs.shape} vs {model_outputs.shape}")
    ref = np.asarray(reference_outputs, dtype=np.float64).reshape(len(reference_outputs), -1)
    mod = np.asarray(model_outputs, dtype=np.float64).reshape(len(model_outputs), -1)
    ref_norm, mod_norm = np.linalg.norm(ref, axis=1), np.linalg.norm(mod, axis=1)
    diff_norm = np.linalg.norm(mod - ref, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ref_norm > 0, diff_norm / np.where(ref_norm > 0, ref_norm, 1.0),
                       np.where(diff_norm > 0, np.inf, 0.0))
    norms = ref_norm * mod_norm
    cosine = np.where(norms > 0, np.sum(ref * mod, axis=1) / np.where(norms > 0, norms, 1.0),
                      np.where(diff_norm > 0, 0.0, 1.0))
    return ErrorMetrics(samples=len(ref), rel_l2_mean=float(rel.mean()), rel_l2_max=float(rel.max()),
                        cosine_mean=float(cosine.mean()), max_abs=float(np.abs(mod - ref).max()) if ref.size else 0.0)
