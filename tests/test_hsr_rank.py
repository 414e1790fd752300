"""Accuracy-aware HSR (``--hsr-rank damage``, issue 14): which layers are over-/under-aligned when the rank is
speed gained per unit of expected damage, the data-free proxy, and the measured damage's wiring."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from support.cli_testing import assert_one_line_error, run_cli
from support.mask_checks import assert_bh_structure
from support.samples import sample_model
from deprune_onnx.analysis import analyze
from deprune_onnx.dw.masks import choose_hsr_patterns, energy_damage, misalignment
from deprune_onnx.dw.planner import HSR_CANDIDATES, DWOptions, plan_dw_layers
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.options import OptionError


def test_damage_rank_over_aligns_the_layers_that_lose_least_per_speed() -> None:
    same = misalignment(np.array([70, 70]), np.array([288, 288]))        # eps 6+6, alpha 3/2 - 1
    small = misalignment(np.array([70]), np.array([288]))                # eps 6: the highest beta
    layers = [(small, None), (same, None), (same, None), (same, None)]
    assert choose_hsr_patterns(layers) == ["o", "o", "u", "u"]          # beta: smaller eps first, then position
    # Damage gaps (over minus under): layers 1 and 3 lose least, so they are over-aligned, whatever their eps.
    assert choose_hsr_patterns(layers, [0.5, 0.1, 0.3, 0.2]) == ["u", "o", "u", "o"]
    # Equal damage: the measured alpha (speed) decides.
    assert choose_hsr_patterns([(same, 0.1), (same, 0.9), (same, 0.5)], [0.2, 0.2, 0.2]) == ["u", "o", "u"]
    # A layer that cannot be over-aligned stays under-aligned even when it is free to prune.
    cannot = misalignment(np.array([10]), np.array([288]))
    assert choose_hsr_patterns([(cannot, None), (same, None)], [0.0, 1.0]) == ["u", "o"]


def test_energy_damage_is_the_relative_energy_of_the_pruned_weights() -> None:
    weight = np.array([3.0, -1.0, 2.0, 0.0]).reshape(4, 1, 1, 1)
    keeps = [np.array([True, True, True, True]), np.array([True, False, True, False]),
             np.array([False, True, False, True])]
    assert energy_damage(weight, [k.reshape(4, 1, 1, 1) for k in keeps]) == pytest.approx([0.0, 1 / 14, 13 / 14])


@pytest.fixture(scope="module")
def mobilenet() -> tuple[onnx.ModelProto, object, dict[str, np.ndarray]]:
    model = onnx.load(str(sample_model("mobilenet_v2")))
    analysis = analyze(model)
    index = GraphIndex(model.graph)
    return model, analysis, {layer.name: index.constant(layer.weight) for layer in analysis.dw_layers}


def test_measured_damage_puts_the_sensitive_layers_under_aligned(mobilenet) -> None:
    model, analysis, weights = mobilenet
    names = [layer.name for layer in analysis.dw_layers]
    asked: dict[str, int] = {}

    def damage(requests: dict[str, list[np.ndarray]]) -> dict[str, list[float]]:
        # The first eight layers (beta's over-aligned half on this model) are made the sensitive ones.
        for name, keeps in requests.items():
            asked[name] = len(keeps)
        return {name: [0.0, 1.0 if names.index(name) < 8 else 0.01 * names.index(name), 0.0, 2.0]
                for name in requests}

    plans = plan_dw_layers(model, analysis, DWOptions(method="bh", dw_ratio=0.3, hsr_rank="damage"), damage)
    assert asked == {name: len(HSR_CANDIDATES) for name in names}
    # The 17 layers are all misaligned at 0.3: floor(17/2) = 8 over-aligned, the cheapest ones (8..15).
    assert "".join(p.pattern for p in plans) == "u" * 8 + "o" * 8 + "u"
    assert all(p.hsr_rank == "damage" and p.hsr_damage["source"] == "measured KL" for p in plans)
    assert_bh_structure(plans, weights, beta_rank=False)
    beta = plan_dw_layers(model, analysis, DWOptions(method="bh", dw_ratio=0.3))
    assert "".join(p.pattern for p in beta) == "o" * 8 + "u" * 9 and {p.hsr_rank for p in beta} == {"beta"}


def test_data_free_damage_proxy_patterns_on_mobilenet_v2(mobilenet) -> None:
    model, analysis, weights = mobilenet
    plans = plan_dw_layers(model, analysis, DWOptions(method="bh", dw_ratio=0.3, hsr_rank="damage"))
    assert "".join(p.pattern for p in plans) == "ooouoouoououuuuuu"
    for plan in plans:
        expected = energy_damage(weights[plan.name], [plan.keep_mask()])[0]
        assert plan.hsr_damage["source"] == "weight energy"
        assert expected == pytest.approx(plan.hsr_damage["over" if plan.pattern == "o" else "under"]) or \
            "balance step" in plan.note
    assert_bh_structure(plans, weights, beta_rank=False)


def test_hsr_rank_is_checked(tmp_path) -> None:
    result = run_cli("prune", sample_model("mobilenet_v2"), tmp_path / "o.onnx", "--hsr-rank", "speed")
    assert result.exit_code == 2 and "--hsr-rank" in result.output
    model = onnx.load(str(sample_model("mobilenet_v2")))
    with pytest.raises(OptionError, match="dw.hsr_rank 'speed'"):
        plan_dw_layers(model, analyze(model), DWOptions(method="bh", hsr_rank="speed"))
    bad = run_cli("prune", sample_model("mobilenet_v2"), tmp_path / "o.onnx", "--calib", tmp_path,
                  "--calib-damp", "lots")
    assert_one_line_error(bad, "--calib-damp")
