"""What a model's output is, so that every command measures it with metrics that mean something.

Three kinds, from the shape of one output [N, ...] (the batch axis first, as every image command feeds it):

- ``class_scores``: one score per class per sample, [N, K] with K >= 2, also written [N, K, 1, 1] or [N, 1, K]
  (every axis but one is 1). Class metrics apply: top-1/top-5, top-1 agreement, KL, logit cosine.
- ``sequence``: a score per class per step, [N, T, C] with T, C >= 2 (a CTC text recogniser). The class axis is
  the last one.
- ``dense``: everything else: maps such as a text detector's probability map [N, 1, H, W] or a segmenter's
  [N, C, H, W], and single values [N, 1]. A top-1 over such an output means nothing (the arg-max of a 640-wide
  row of a map is not a class), so these, and sequences, are compared by relative L2 error, cosine and max
  absolute error (``deprune_onnx.evaluation.metrics.error_metrics``).
"""
from __future__ import annotations

from collections.abc import Sequence

CLASS_SCORES = "class_scores"
SEQUENCE = "sequence"
DENSE = "dense"
OUTPUT_KINDS = (CLASS_SCORES, SEQUENCE, DENSE)
DESCRIPTIONS = {CLASS_SCORES: "class scores", SEQUENCE: "a sequence of class scores [N, T, C]",
                DENSE: "a dense output (map or values)"}


def output_kind(shape: Sequence[int]) -> str:
    """The kind of an output of shape [N, ...] (see the module docstring)."""
    per_sample = [int(d) for d in shape[1:]]
    wide = [d for d in per_sample if d != 1]
    if len(wide) == 1 and wide[0] >= 2:
        return CLASS_SCORES
    if len(per_sample) == 2 and len(wide) == 2:
        return SEQUENCE
    return DENSE


def describe(kind: str, shape: Sequence[int]) -> str:
    """``"a dense output (map or values) [N, 1, 640, 640]"``: for messages."""
    return f"{DESCRIPTIONS[kind]} [N, {', '.join(str(int(d)) for d in shape[1:])}]"
