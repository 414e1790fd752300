"""DCP / BWT / HSR masks: the structural rules of README.md's step 4, checked on real and random weights.

The checks here do not reuse the code under test: the largest-magnitude property and the per-sub-GEMM counts
are recomputed with plain loops over sub-GEMMs.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from support.samples import sample_model
from deprune_onnx.analysis import analyze
from deprune_onnx.dw.planner import DWOptions, plan_dw_layers
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.dw.masks import (align_subgemms, bwt_mask, choose_hsr_patterns, dcp_mask, misalignment)
from support.mask_checks import T, assert_bh_structure, assert_largest_kept, subgemm_slices



def plans_for(key: str, method: str, ratio: float):
    model = onnx.load(str(sample_model(key)))
    analysis = analyze(model)
    plans = plan_dw_layers(model, analysis, DWOptions(method=method, dw_ratio=ratio))
    index = GraphIndex(model.graph)
    weights = {layer.name: index.constant(layer.weight) for layer in analysis.dw_layers}
    return plans, weights


@pytest.mark.parametrize("key", ["mobilenet_v2", "mobilenet_v3_small", "pplcnet"])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.78])
def test_bwt_prunes_the_same_count_in_every_full_subgemm(key: str, ratio: float) -> None:
    plans, weights = plans_for(key, "b", ratio)
    for plan in plans:
        keep = plan.keep_mask()
        kh, kw = plan.shape[2:]
        for channels in subgemm_slices(plan.shape[0]):
            vectors = (channels.stop - channels.start) * kh * kw
            pruned = int((~keep[channels]).sum())
            assert pruned == math.floor(ratio * vectors + 0.5)
        full = [int((~keep[s]).sum()) for s in subgemm_slices(plan.shape[0]) if s.stop - s.start == 32]
        assert len(set(full)) <= 1
        real_dw = min((~keep[s]).sum() / keep[s].size for s in subgemm_slices(plan.shape[0]))
        assert abs(real_dw - ratio) <= 1.0 / (kh * kw * 8)  # within one vector of the smallest sub-GEMM
        assert_largest_kept(weights[plan.name], keep, subgemm_slices(plan.shape[0]))


@pytest.mark.parametrize("key", ["mobilenet_v2", "mobilenet_v3_small"])
def test_dcp_ranks_the_whole_layer_and_real_dw_is_at_most_the_layer_ratio(key: str) -> None:
    plans, weights = plans_for(key, "dcp", 0.78)
    for plan in plans:
        keep = plan.keep_mask()
        assert (~keep).sum() == math.floor(0.78 * keep.size + 0.5)
        assert_largest_kept(weights[plan.name], keep, [slice(0, plan.shape[0])])
        real_dw = min((~keep[s]).sum() / keep[s].size for s in subgemm_slices(plan.shape[0]))
        assert real_dw <= (~keep).sum() / keep.size + 1e-12  # the least pruned sub-GEMM is at most average


@pytest.mark.parametrize("key,ratio", [("mobilenet_v2", 0.78), ("mobilenet_v3_small", 0.82), ("pplcnet", 0.5)])
def test_bh_aligns_every_subgemm_and_splits_half_half_by_beta(key: str, ratio: float) -> None:
    plans, weights = plans_for(key, "bh", ratio)
    assert_bh_structure(plans, weights)


def test_bh_keeps_mobilenet_v2_model_wide_ratio_within_one_point_at_78() -> None:
    plans, _ = plans_for("mobilenet_v2", "bh", 0.78)
    total = sum(sum(p.vectors_per_subgemm) for p in plans)
    kept = sum(sum(p.kept_per_subgemm) for p in plans)
    assert abs((1 - kept / total) - 0.78) <= 0.01
    assert sum(p.pattern == "u" for p in plans) == 9 and sum(p.pattern == "o" for p in plans) == 8


def test_hsr_over_and_under_alignment_move_to_the_neighbouring_tiles() -> None:
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((72, 1, 3, 3)).astype(np.float32)  # sub-GEMMs of 288, 288, 72 vectors
    keep = bwt_mask(weight, 0.6)
    before = [int(keep[s].sum()) for s in subgemm_slices(72)]
    over = align_subgemms(weight, keep, "o")
    under = align_subgemms(weight, keep, "u")
    for s, k in zip(subgemm_slices(72), before):
        vectors = (s.stop - s.start) * 9
        assert over[s].sum() == k - k % T
        assert under[s].sum() == min(vectors, k + (T - k % T) % T)
        assert not (over[s] & ~keep[s]).any()   # over-alignment only prunes
        assert not (keep[s] & ~under[s]).any()  # under-alignment only restores


def test_tile_model_alpha_and_never_emptying_a_subgemm() -> None:
    info = misalignment(np.array([63, 63]), np.array([288, 288]))
    assert info.eps == 62 and info.alpha == pytest.approx(1.0) and info.can_over_align
    small = misalignment(np.array([13]), np.array([72]))
    assert not small.can_over_align and small.alpha is None
    assert misalignment(np.array([288, 64]), np.array([288, 288])).eps == 0
    patterns = choose_hsr_patterns([(small, None), (info, None), (info, 0.5), (misalignment(np.array([64]),
                                                                                         np.array([288])), None)])
    assert patterns == ["u", "o", "u", "aligned"]


def test_ties_are_broken_by_flat_index() -> None:
    weight = np.ones((4, 1, 3, 3), dtype=np.float32)
    keep = dcp_mask(weight, 0.5)
    assert (~keep).reshape(-1)[:18].all() and keep.reshape(-1)[18:].all()
    np.testing.assert_array_equal(bwt_mask(weight, 0.5), keep)


def test_ratio_zero_keeps_everything() -> None:
    plans, _ = plans_for("mobilenet_v3_small", "bh", 0.0)
    assert all(p.keep_mask().all() and p.pattern == "aligned" for p in plans)
