"""The DW planner's options and recorded fields on small chains of DW layers whose answers are worked out by hand:
per-layer ratios and exclusions (names and globs), measured HSR alphas, the tile size, the notes and alpha
sources written into the plan, the global and channel baselines, and the HSR timings file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deprune_onnx.dw.masks import round_half_up
from deprune_onnx.dw.planner import DWOptions, load_hsr_timings, plan_dw_layers
from deprune_onnx.analysis import analyze
from deprune_onnx.errors import DepruneError
from test_mask_rules import dw_chain, plan, top_k_per_subgemm, weight_of

BALANCE_RESTORED = "balance step: one extra tile restored per sub-GEMM"
BALANCE_PRUNED = "balance step: one extra tile pruned per sub-GEMM"


def test_recorded_fields_and_balance_notes_word_for_word() -> None:
    plans = plan(dw_chain([(3, 3)] * 5, seed=2), "bh", 0.78)
    assert [p.note for p in plans] == ["", "", BALANCE_RESTORED, BALANCE_RESTORED, ""]
    assert all(p.alpha_source == "tile-model" and p.eps == 31 and p.alpha == 1.0 for p in plans)
    plans = plan(dw_chain([(3, 3), (3, 3), (3, 3), (1, 5)], seed=4), "bh", 0.3)
    assert [p.note for p in plans] == ["", "", "", BALANCE_PRUNED]
    assert [p.eps for p in plans] == [10, 10, 10, 16]


def test_measured_alphas_replace_the_tile_model_and_decide_the_cut() -> None:
    model = dw_chain([(3, 3)] * 4, seed=1)
    plans = plan(model, "bh", 0.5, hsr_alphas={"dw3": 0.5, "dw2": 0.3})
    assert [p.pattern for p in plans] == ["u", "u", "o", "o"]
    assert [p.alpha_source for p in plans] == ["tile-model", "tile-model", "measured", "measured"]
    assert [p.alpha for p in plans] == [0.25, 0.25, 0.3, 0.5]
    assert [p.beta for p in plans] == [0.25 / 16, 0.25 / 16, 0.3 / 16, 0.5 / 16]
    with pytest.raises(DepruneError, match="dw.hsr_alphas: layer 'nope' is not a DW layer"):
        plan(model, "bh", 0.5, hsr_alphas={"nope": 1.0})


def test_a_layer_that_cannot_be_over_aligned_says_so() -> None:
    plans = plan(dw_chain([(3, 3), (3, 3), (3, 3)], channels=40, seed=5), "bh", 0.78)
    # K [63, 16] per layer: over-aligning the 8-channel sub-GEMM (16 -> 0) would empty it
    assert all(p.pattern == "u" and p.alpha is None and p.beta is None for p in plans)
    assert all(p.note.startswith("over-aligning would empty a sub-GEMM, so this layer is under-aligned")
               for p in plans)


def test_tile_size_is_used_for_alignment() -> None:
    model = dw_chain([(3, 3)] * 4, seed=1)
    plans = plan(model, "bh", 0.5, tile=16)  # K 144 = 9 tiles of 16: aligned already
    assert [p.pattern for p in plans] == ["aligned"] * 4
    plans = plan(model, "bh", 0.6, tile=16)  # K 115: eps 3; o -> 112, u -> 128: 0.583 model-wide,
    # so one more tile of 16 is pruned from the first over-aligned layer: 0.597
    assert [p.kept_per_subgemm for p in plans] == [[96], [112], [128], [128]]
    assert [p.note for p in plans] == [BALANCE_PRUNED, "", "", ""]
    assert [p.eps for p in plans] == [3] * 4 and plans[0].alpha == pytest.approx(8 / 7 - 1)


def test_layer_ratios_exclusions_and_globs() -> None:
    model = dw_chain([(3, 3)] * 4, seed=6)
    plans = plan(model, "b", 0.5, layer_ratios=[("dw*", 0.3), ("dw1", 0.7)], exclude=["dw3"])
    assert [p.method for p in plans] == ["b", "b", "b", "none"]
    assert [p.target_ratio for p in plans] == [0.3, 0.7, 0.3, 0.0]
    kept = [288 - round_half_up(r * 288) for r in (0.3, 0.7, 0.3)] + [288]
    assert [p.kept_per_subgemm for p in plans] == [[k] for k in kept]
    for p, k in zip(plans, kept):
        np.testing.assert_array_equal(p.keep_mask(), top_k_per_subgemm(weight_of(model, p.weight), [k]))
    for option, value in (("layer_ratios", [("zz*", 0.3)]), ("exclude", ["zz"])):
        flag = f"dw.{option}"  # the library's parameter name (the CLI shows the flag, tests/test_options.py)
        with pytest.raises(DepruneError, match=f"{flag} 'zz\\*?': matches no DW layer"):
            plan(model, "b", 0.5, **{option: value})


def test_bh_leaves_excluded_and_zero_ratio_layers_out_of_hsr_and_balance() -> None:
    model = dw_chain([(3, 3)] * 6, seed=2)
    plans = plan(model, "bh", 0.78, exclude=["dw5"], layer_ratios=[("dw4", 0.0)])
    assert [p.pattern for p in plans] == ["o", "o", "u", "u", "aligned", "-"]
    # the model-wide target counts dw4 (0.0) but not the excluded dw5: (4 * 0.78) / 5 = 0.624;
    # 32+32+64+64+288 = 480 of 1440 kept = 0.667 after HSR, one extra tile on dw2 -> 0.644, on dw3 -> 0.622
    assert [p.kept_per_subgemm for p in plans] == [[32], [32], [96], [96], [288], [288]]
    assert plans[5].method == "none" and plans[5].keep_mask().all()


def test_global_and_channel_baselines_through_the_planner() -> None:
    model = dw_chain([(3, 3), (5, 5)], seed=7)
    plans = plan(model, "global", 0.5)
    weights = [weight_of(model, p.weight) for p in plans]
    flat = np.concatenate([np.abs(w).reshape(-1) for w in weights])
    threshold = np.sort(flat)[round_half_up(0.5 * flat.size) - 1]
    for p, w in zip(plans, weights):
        keep = np.abs(w) > threshold
        np.testing.assert_array_equal(p.keep_mask(), keep)
        assert p.note == f"global ranking: this layer pruned {1 - keep.mean():.3f}"
    assert all(p.keep_mask().all() and p.note == "" for p in plan(model, "global", 0.0))
    channel = plan(model, "channel", 0.25)
    for p, w in zip(channel, weights):
        norms = np.sqrt((w.astype(np.float64) ** 2).reshape(32, -1).sum(axis=1))
        np.testing.assert_array_equal(p.keep_mask()[:, 0, 0, 0], norms >= np.sort(norms)[8])
        assert (p.keep_mask() == p.keep_mask()[:, :1, :1, :1]).all()


def test_ratio_zero_keeps_every_weight_in_every_method() -> None:
    model = dw_chain([(3, 3)], seed=8)
    for method in ("dcp", "b", "bh", "channel", "global"):
        (layer,) = plan(model, method, 0.0)
        assert layer.keep_mask().dtype == bool and layer.keep_mask().all(), method


@pytest.mark.parametrize("content, expected", [
    ({"dw0": 0.5}, {"dw0": 0.5}),
    ({"dw0": {"alpha": "0.25"}}, {"dw0": 0.25}),
    ({"dw0": {"time_unaligned_us": 3.0, "time_aligned_us": 2.0}}, {"dw0": 0.5}),
])
def test_hsr_timings_file_formats(tmp_path: Path, content, expected) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    assert load_hsr_timings(path) == expected


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "HSR timings must be a JSON object mapping layer name to alpha"),
    ("{", "cannot read --hsr-timings as JSON (Expecting property name"),
    ('{"dw0": {"time_aligned_us": 2}}', "layer 'dw0': expected alpha or time_unaligned_us/time_aligned_us"),
    ('{"dw0": {"time_unaligned_us": 1, "time_aligned_us": 0}}', "layer 'dw0': expected alpha"),
    ('{"dw0": "x"}', "layer 'dw0': expected alpha"),
    ('{"dw0": Infinity}', "layer 'dw0': alpha must be finite"),
])
def test_hsr_timings_file_errors_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DepruneError) as info:
        load_hsr_timings(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    with pytest.raises(DepruneError, match=r"missing.json: no such file \(--hsr-timings\)$"):
        load_hsr_timings(tmp_path / "missing.json")


def test_option_errors() -> None:
    model = dw_chain([(3, 3)], seed=9)
    # Library errors name the parameter (the CLI renders them with the flag, tests/test_options.py).
    for options, message in ((dict(method="x"), "dw.method 'x': expected one of dcp, b, bh, channel, global"),
                             (dict(dw_ratio=1.0), "dw.dw_ratio 1.0: a pruning ratio must be in \\[0, 1\\)"),
                             (dict(layer_ratios=[("dw0", -0.1)]), "dw.layer_ratios -0.1"),
                             (dict(tile=0), "dw.tile 0: must be a positive number of vectors")):
        with pytest.raises(DepruneError, match=message):
            plan_dw_layers(model, analyze(model), DWOptions(**options))
