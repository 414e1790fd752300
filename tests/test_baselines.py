"""DW baselines at equal PR: whole-channel pruning and one global magnitude ranking."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from support.samples import sample_model
from deprune_onnx.analysis import analyze
from deprune_onnx.dw.planner import plan_dw_layers
from deprune_onnx.options import DWOptions, OptionError
from deprune_onnx.dw.masks import channel_mask, global_masks
from test_masks import plans_for


def test_channel_mask_zeroes_whole_channels_of_smallest_norm() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((40, 1, 3, 3)).astype(np.float32)
    keep = channel_mask(weight, 0.3)
    per_channel = keep.reshape(40, -1)
    assert np.all(per_channel.all(axis=1) | ~per_channel.any(axis=1))  # whole channels only
    pruned = ~per_channel.all(axis=1)
    assert pruned.sum() == math.floor(0.3 * 40 + 0.5)
    norms = np.linalg.norm(weight.reshape(40, -1), axis=1)
    assert norms[pruned].max() <= norms[~pruned].min()


def test_global_masks_rank_across_layers() -> None:
    small = np.full((4, 1, 3, 3), 0.1, np.float32)
    large = np.arange(1, 73, dtype=np.float32).reshape(8, 1, 3, 3)
    keeps = global_masks([small, large], 0.5)
    total = small.size + large.size
    assert sum(int((~k).sum()) for k in keeps) == math.floor(0.5 * total + 0.5)
    assert not keeps[0].any()  # the small-scale layer goes first
    pruned_large = large[~keeps[1]]
    assert pruned_large.max() < large[keeps[1]].min()


@pytest.mark.parametrize("method", ["channel", "global"])
def test_baselines_meet_the_model_wide_ratio_on_mobilenet_v2(method: str) -> None:
    plans, weights = plans_for("mobilenet_v2", method, 0.5)
    total = sum(sum(p.vectors_per_subgemm) for p in plans)
    kept = sum(sum(p.kept_per_subgemm) for p in plans)
    assert abs((1 - kept / total) - 0.5) <= 0.01
    assert all(p.method == method and p.pattern == "-" for p in plans)
    if method == "global":  # the per-layer ratios follow the weight scales: they differ between layers
        ratios = [1 - sum(p.kept_per_subgemm) / sum(p.vectors_per_subgemm) for p in plans]
        assert max(ratios) - min(ratios) > 0.2


def test_global_refuses_per_layer_ratios() -> None:
    model = onnx.load(str(sample_model("mobilenet_v3_small")))
    with pytest.raises(OptionError, match="^dw.layer_ratios: not available with dw.method global") as error:
        plan_dw_layers(model, analyze(model), DWOptions(method="global", layer_ratios=[("*", 0.3)]))
    assert error.value.params[:2] == ("dw.layer_ratios", "dw.method")
