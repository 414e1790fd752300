"""Which layers and which weights the DW rules choose, on planted cases whose answer is worked out by hand.

The cases are the ones that let real bugs through before (issue #17): layers of equal beta on both sides of the
HSR over/under cut, ties in the balance step, ties in magnitude inside a sub-GEMM, and non-square kernels. The
expected masks are recomputed here with plain argsorts over each sub-GEMM, not with the functions under test.
The tie-break rules pinned here are the documented ones: dw/masks.py (equal |w|: the lower flat index is pruned
first and restored first), choose_hsr_patterns (equal beta: the earlier layer is over-aligned) and
planner._balance_hsr (closest to the target, then lowest beta restored / highest beta pruned, then the earlier
layer).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deprune_onnx.analysis import analyze
from deprune_onnx.dw.masks import (Misalignment, align_subgemms, bwt_mask, choose_hsr_patterns, dcp_mask,
                                   keep_top_per_subgemm, kept_per_subgemm, misalignment, round_half_up,
                                   subgemm_sizes, subgemm_vectors, tile_time)
from deprune_onnx.dw.planner import DWOptions, plan_dw_layers


def dw_chain(kernels: list[tuple[int, int]], channels: int = 32, seed: int = 0) -> onnx.ModelProto:
    """input [1, C, 16, 16] -> DW(k0) -> Relu -> DW(k1) -> ... ; distinct random weights per layer."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i, (kh, kw) in enumerate(kernels):
        inits.append(numpy_helper.from_array(rng.standard_normal((channels, 1, kh, kw)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"dw{i}"], name=f"dw{i}", group=channels,
                                      kernel_shape=[kh, kw], pads=[kh // 2, kw // 2, (kh - 1) // 2, (kw - 1) // 2]))
        nodes.append(helper.make_node("Relu", [f"dw{i}"], [f"act{i}"], name=f"act{i}"))
        x = f"act{i}"
    graph = helper.make_graph(nodes, "dw_chain",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, 16, 16])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def plan(model: onnx.ModelProto, method: str, ratio: float, **options):
    return plan_dw_layers(model, analyze(model), DWOptions(method=method, dw_ratio=ratio, **options))


def weight_of(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def top_k_per_subgemm(weight: np.ndarray, kept: list[int]) -> np.ndarray:
    """Expected mask: the kept[g] largest |w| of each 32-channel sub-GEMM (weights here have no ties)."""
    flat = np.abs(weight.reshape(weight.shape[0], -1))
    keep = np.zeros(flat.shape, dtype=bool)
    for g, k in enumerate(kept):
        block = flat[32 * g: 32 * g + 32].reshape(-1)
        chosen = np.zeros(block.size, dtype=bool)
        chosen[np.argsort(-block)[:k]] = True
        keep[32 * g: 32 * g + 32] = chosen.reshape(-1, flat.shape[1])
    return keep.reshape(weight.shape)


# --- HSR: equal beta on both sides of the cut --------------------------------------------------------------

def test_equal_beta_layers_are_cut_by_position_earlier_over_aligned() -> None:
    info = misalignment(np.array([144]), np.array([288]))
    assert (info.eps, info.alpha, info.can_over_align) == (16, 0.25, True)  # ceil(144/32)=5 -> 4 tiles
    assert choose_hsr_patterns([(info, None)] * 4) == ["o", "o", "u", "u"]
    assert choose_hsr_patterns([(info, None)] * 3) == ["o", "u", "u"]
    # a measured alpha equal to the model's ties too; one measured higher jumps the queue
    assert choose_hsr_patterns([(info, None), (info, 0.25), (info, 0.3)]) == ["u", "u", "o"]
    assert choose_hsr_patterns([(info, 0.3), (info, None), (info, None), (info, 0.3)]) == ["o", "u", "u", "o"]


def test_planner_splits_identical_layers_by_position_and_keeps_the_largest_weights() -> None:
    model = dw_chain([(3, 3)] * 4, seed=1)
    plans = plan(model, "bh", 0.5)
    # BWT keeps 144 of 288 per layer: eps 16, beta 0.25/16 for all four; half over (128), half under (160)
    assert [p.pattern for p in plans] == ["o", "o", "u", "u"]
    assert [p.kept_per_subgemm for p in plans] == [[128], [128], [160], [160]]
    assert [p.beta for p in plans] == [0.25 / 16] * 4
    for p in plans:
        expected = top_k_per_subgemm(weight_of(model, p.weight), p.kept_per_subgemm)
        np.testing.assert_array_equal(p.keep_mask(), expected, err_msg=p.name)


# --- the balance step: ties ----------------------------------------------------------------------------

def test_balance_step_restores_the_earlier_of_equal_layers() -> None:
    # five equal 3x3 layers at 0.78: K 63 (eps 31, beta 1/31); 2 over (32), 3 under (64): 0.822 model-wide.
    # Two extra tiles bring it to 0.778; with equal beta and equal gain the earlier under-aligned layers move.
    model = dw_chain([(3, 3)] * 5, seed=2)
    plans = plan(model, "bh", 0.78)
    assert [p.pattern for p in plans] == ["o", "o", "u", "u", "u"]
    assert [p.kept_per_subgemm for p in plans] == [[32], [32], [96], [96], [64]]
    assert ["balance step" in p.note for p in plans] == [False, False, True, True, False]
    for p in plans:
        np.testing.assert_array_equal(p.keep_mask(), top_k_per_subgemm(weight_of(model, p.weight),
                                                                       p.kept_per_subgemm), err_msg=p.name)


def test_balance_step_restores_the_lowest_beta_first_at_equal_gain() -> None:
    # 3x3 at 0.78: K 63, beta 1/31. 5x5 at 0.78: V 800, K 176 (eps 16, 6 -> 5 tiles, alpha 0.2, beta 0.0125).
    # o: dw0, dw1; u: dw2 (3x3) and dw3 (5x5), both gain 32 from one more tile; 0.808 -> the 5x5 one moves
    # (lower beta) to 0.788; the next move would overshoot to 0.769 (further), so the step stops.
    model = dw_chain([(3, 3), (3, 3), (3, 3), (5, 5)], seed=3)
    plans = plan(model, "bh", 0.78)
    assert [p.pattern for p in plans] == ["o", "o", "u", "u"]
    assert plans[3].beta == pytest.approx(0.2 / 16) and plans[2].beta == pytest.approx(1 / 31)
    assert [p.kept_per_subgemm for p in plans] == [[32], [32], [64], [224]]
    assert ["balance step" in p.note for p in plans] == [False, False, False, True]


def test_balance_step_prunes_the_highest_beta_first_when_under_pruned() -> None:
    # 0.3 on 3x3: V 288, K 202 (eps 10, 7 -> 6 tiles, alpha 1/6, beta 1/60); on 1x5: V 160, K 112 (eps 16,
    # 4 -> 3 tiles, alpha 1/3, beta 1/48). Over: dw3 (highest beta) and dw0 (first of three equal betas).
    # After HSR 192 + 224 + 224 + 96 = 736 of 1024 kept: 0.281, under the 0.3 target. Both over-aligned layers
    # lose 32 with one more tile; the higher beta (dw3) goes first -> 0.3125, and restoring 32 again would not
    # come closer, so the step stops there.
    model = dw_chain([(3, 3), (3, 3), (3, 3), (1, 5)], seed=4)
    plans = plan(model, "bh", 0.3)
    assert [p.pattern for p in plans] == ["o", "u", "u", "o"]
    assert plans[0].beta == pytest.approx(1 / 60) and plans[3].beta == pytest.approx(1 / 48)
    assert [p.kept_per_subgemm for p in plans] == [[192], [224], [224], [64]]
    assert ["balance step" in p.note for p in plans] == [False, False, False, True]
    for p in plans:
        np.testing.assert_array_equal(p.keep_mask(), top_k_per_subgemm(weight_of(model, p.weight),
                                                                       p.kept_per_subgemm), err_msg=p.name)


# --- magnitude ties inside a sub-GEMM (documented: lower flat index pruned first, restored first) -----------

def test_planted_magnitude_ties_follow_the_flat_index_rule() -> None:
    weight = np.ones((32, 1, 1, 3), dtype=np.float32)  # 96 equal weights in one sub-GEMM
    weight[0, 0, 0, 0] = -1.0  # sign does not matter
    dcp = dcp_mask(weight, 0.25)
    assert (~dcp).reshape(-1).nonzero()[0].tolist() == list(range(24))
    np.testing.assert_array_equal(bwt_mask(weight, 0.25), dcp)
    # over-align 72 -> 64: the 8 lowest-index kept weights go
    over = align_subgemms(weight, dcp, "o")
    assert (~over).reshape(-1).nonzero()[0].tolist() == list(range(32))
    # under-align from 40 kept (eps 8): the 24 lowest-index pruned weights come back first
    keep = np.zeros(96, dtype=bool)
    keep[56:] = True
    under = align_subgemms(weight, keep.reshape(weight.shape), "u")
    assert under.reshape(-1).nonzero()[0].tolist() == list(range(24)) + list(range(56, 96))
    top = keep_top_per_subgemm(weight, np.array([10]))
    assert top.reshape(-1).nonzero()[0].tolist() == list(range(86, 96))


def test_ties_between_distinct_magnitudes_never_reorder_them() -> None:
    # within each sub-GEMM: one small tied block at low index, larger tied values later
    weight = np.tile(np.array([0.5, 0.5, 2.0, 2.0, 1.0, 1.0], dtype=np.float32), 32 * 2).reshape(64, 1, 2, 3)
    keep = bwt_mask(weight, 0.5)
    for g in range(2):
        block = keep[32 * g: 32 * g + 32].reshape(-1)
        assert block.sum() == 96
        assert block[2::6].all() and block[3::6].all()  # the 2.0s stay
        assert not block[0::6].any() and not block[1::6].any()  # the 0.5s go
        assert block[4::6].tolist() == [False] * 16 + [True] * 16  # the 1.0s: lower flat index pruned first


# --- shapes: non-square kernels and partial sub-GEMMs ----------------------------------------------------

@pytest.mark.parametrize("shape", [(40, 1, 3, 5), (70, 1, 5, 3), (32, 1, 1, 7)])
def test_bwt_and_alignment_on_non_square_kernels_and_partial_subgemms(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    weight = rng.standard_normal(shape).astype(np.float32)
    taps = shape[2] * shape[3]
    sizes = [min(32, shape[0] - start) for start in range(0, shape[0], 32)]
    assert subgemm_sizes(shape[0]).tolist() == sizes
    assert subgemm_vectors(shape).tolist() == [s * taps for s in sizes]
    keep = bwt_mask(weight, 0.6)
    expected_k = [s * taps - round_half_up(0.6 * s * taps) for s in sizes]
    assert kept_per_subgemm(keep).tolist() == expected_k
    np.testing.assert_array_equal(keep, top_k_per_subgemm(weight, expected_k))
    for pattern in ("o", "u"):
        aligned = align_subgemms(weight, keep, pattern)
        k = kept_per_subgemm(aligned).tolist()
        assert all(kk % 32 == 0 or kk == s * taps for kk, s in zip(k, sizes)), (pattern, k)
        np.testing.assert_array_equal(aligned, top_k_per_subgemm(weight, k))


def test_counts_and_tile_model_by_hand() -> None:
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.49)] == [1, 2, 3, 2]
    assert subgemm_sizes(64).tolist() == [32, 32] and subgemm_sizes(65).tolist() == [32, 32, 1]
    keep = np.zeros((33, 1, 1, 2), dtype=bool)
    keep[0, 0, 0, 0] = keep[31, 0, 0, 1] = keep[32, 0, 0, :] = True
    assert kept_per_subgemm(keep).tolist() == [2, 2]
    assert tile_time(np.array([33, 64, 5])) == 2 and tile_time(np.array([], dtype=int)) == 0
    # a full sub-GEMM (K == V) is aligned even when V is not a multiple of the tile
    info = misalignment(np.array([70, 40]), np.array([70, 288]))
    assert (info.eps, info.can_over_align, info.alpha) == (8, True, 0.0)  # 3 tiles before and after
    assert misalignment(np.array([40, 20]), np.array([288, 288])).can_over_align is False
    assert choose_hsr_patterns([(Misalignment(0, None, True), None)]) == ["aligned"]


# --- edge cases found by mutation testing (bench/results/mutation_*.md) -----------------------------------

def test_keep_top_per_subgemm_on_several_and_partial_subgemms() -> None:
    rng = np.random.default_rng(7)
    scores = rng.random((70, 1, 3, 5))  # sub-GEMMs of 480, 480 and 90 vectors; scores, not magnitudes
    keep = keep_top_per_subgemm(scores, np.array([100, 50, 30]))
    assert keep.dtype == bool and keep.shape == scores.shape
    assert kept_per_subgemm(keep).tolist() == [100, 50, 30]
    np.testing.assert_array_equal(keep, top_k_per_subgemm(scores, [100, 50, 30]))


def test_alignment_leaves_full_and_aligned_subgemms_alone_and_fixes_eps_1() -> None:
    rng = np.random.default_rng(8)
    weight = rng.standard_normal((72, 1, 3, 3)).astype(np.float32)  # V = 288, 288, 72
    keep = top_k_per_subgemm(weight, [65, 64, 72])  # eps 1, aligned (64), full but 72 % 32 != 0
    over, under = align_subgemms(weight, keep, "o"), align_subgemms(weight, keep, "u")
    assert kept_per_subgemm(over).tolist() == [64, 64, 72]
    assert kept_per_subgemm(under).tolist() == [96, 64, 72]
    np.testing.assert_array_equal(over, top_k_per_subgemm(weight, [64, 64, 72]))
    np.testing.assert_array_equal(under, top_k_per_subgemm(weight, [96, 64, 72]))
    with pytest.raises(ValueError, match="pattern must be 'o' or 'u', got 'x'"):
        align_subgemms(weight, keep, "x")


def test_misalignment_edge_cases() -> None:
    vectors = np.array([288, 288])
    # an emptied sub-GEMM (K 0) is aligned and does not block over-alignment of the others
    assert misalignment(np.array([0, 40]), vectors) == Misalignment(8, 1.0, True)
    assert misalignment(np.array([1]), np.array([288])) == Misalignment(1, None, False)  # 1 -> 0 would empty it
    assert misalignment(np.array([0]), np.array([288])) == Misalignment(0, None, True)
    # one sub-GEMM cannot be over-aligned: no alpha, even though the other could
    assert misalignment(np.array([13, 100]), np.array([72, 288])) == Misalignment(17, None, False)
    # the tile size is used for both tile counts: tile 8, K 100 -> 13 tiles now, 12 after over-alignment
    assert misalignment(np.array([100]), np.array([288]), tile=8) == Misalignment(4, 13 / 12 - 1, True)


def test_choose_hsr_patterns_edge_cases() -> None:
    small = misalignment(np.array([13]), np.array([72]))   # cannot over-align
    one = misalignment(np.array([33]), np.array([288]))    # eps 1 is misaligned
    assert one.eps == 1
    assert choose_hsr_patterns([(one, None), (one, None)]) == ["o", "u"]
    # a measured alpha does not make a layer that cannot be over-aligned eligible (50/13 would beat one's 1/1)
    assert choose_hsr_patterns([(small, 50.0), (one, None)]) == ["u", "o"]
    # with no eligible layer in the top half, nothing is over-aligned
    assert choose_hsr_patterns([(small, None)] * 3) == ["u", "u", "u"]


def test_subgemm_vectors_uses_the_given_width() -> None:
    assert subgemm_vectors((40, 1, 3, 5), 8).tolist() == [120] * 5
    assert subgemm_vectors((40, 1, 3, 5), 16).tolist() == [240, 240, 120]


def test_global_masks_on_layers_of_different_kernel_shapes() -> None:
    from deprune_onnx.dw.masks import global_masks

    rng = np.random.default_rng(9)
    weights = [rng.standard_normal((8, 1, 3, 3)), rng.standard_normal((4, 1, 5, 5)) * 2]
    keeps = global_masks(weights, 0.5)
    flat = np.concatenate([np.abs(w).reshape(-1) for w in weights])
    threshold = np.sort(flat)[round_half_up(0.5 * flat.size) - 1]
    for w, keep in zip(weights, keeps):
        assert keep.shape == w.shape
        np.testing.assert_array_equal(keep, np.abs(w) > threshold)
