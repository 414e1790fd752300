"""--target-speedup (issue 14): ratios chosen to reach a predicted DW speedup of the tile cost model, with
--allocate at the least predicted KL (checked exhaustively), without it the least uniform ratio."""
from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest

from support.cli_testing import assert_one_line_error, run_cli
from support.samples import sample_model
from deprune_onnx.analysis import analyze
from deprune_onnx.dw.planner import DWOptions, plan_dw_layers, ratio_for_speedup
from deprune_onnx.dw.speed import SpeedModel
from deprune_onnx.errors import DepruneError
from deprune_onnx.recovery.allocation import (LayerSensitivity, allocate_for_speedup, candidate_ratios,
                                              predicted_loss, tile_steps)
from deprune_onnx.report.build import predicted_dw_speedup


def test_tile_steps_of_a_full_subgemm() -> None:
    # V = 32 * 9 = 288 vectors: ratio 0 -> 9 steps, 0.5 -> K 144 -> 5 steps, bh's 0.889 -> K 32 -> 1 step.
    assert tile_steps((64, 1, 3, 3), np.array([0.0, 0.5, 1 - 32 / 288])).tolist() == [9, 5, 1]
    assert tile_steps((8, 1, 3, 3), np.array([0.0])).tolist() == [3]         # 72 vectors


def _tile_model(shapes: dict, scales: dict) -> SpeedModel:
    """The tile cost model of layers with these shapes and G * H_out * W_out scales."""
    steps = {n: int(tile_steps(shapes[n], np.array([0.0]))[0]) for n in shapes}
    return SpeedModel("tile", {n: float(scales[n] * steps[n]) for n in shapes}, {n: float(scales[n]) for n in shapes},
                      steps, {n: "tile model" for n in shapes})


def test_speedup_allocation_is_the_least_kl_that_reaches_the_speedup() -> None:
    curves = [LayerSensitivity("a", 2880, [0.0, 0.5, 0.9], [0.0, 0.01, 0.05]),
              LayerSensitivity("b", 2880, [0.0, 0.5, 0.9], [0.0, 2.0, 9.0]),
              LayerSensitivity("c", 1440, [0.0, 0.5, 0.9], [0.0, 0.2, 1.0])]
    shapes = {"a": (320, 1, 3, 3), "b": (320, 1, 3, 3), "c": (160, 1, 3, 3)}
    scales = {"a": 10 * 49, "b": 10 * 196, "c": 5 * 784}          # G * H_out * W_out
    speed = _tile_model(shapes, scales)
    allocation = allocate_for_speedup(curves, shapes, speed, 1.6, "bh")
    assert allocation.predicted_dw_speedup >= 1.6
    assert allocation.ratios["b"] < allocation.ratios["a"]        # the sensitive layer is spared
    # Exhaustive over bh's tile-aligned candidates: nothing reaching 1.6x predicts less KL.
    options = {c.name: candidate_ratios(shapes[c.name], "bh", 0.9) for c in curves}
    dense = sum(scales[n] * 9 for n in scales)
    best = np.inf
    for combo in itertools.product(*(options[c.name] for c in curves)):
        cost = sum(scales[c.name] * tile_steps(shapes[c.name], np.array([r]))[0] for c, r in zip(curves, combo))
        if dense / cost >= 1.6:
            best = min(best, sum(predicted_loss(c, np.array([r]))[0] for c, r in zip(curves, combo)))
    assert allocation.predicted_total == pytest.approx(best, abs=1e-9)
    for name, speedup in allocation.predicted_speedup.items():
        assert speedup == pytest.approx(9 / tile_steps(shapes[name], np.array([allocation.ratios[name]]))[0])
    with pytest.raises(DepruneError, match="--target-speedup 20"):
        allocate_for_speedup(curves, shapes, speed, 20.0, "bh")


def test_uniform_ratio_for_a_speedup_is_the_least_that_reaches_it() -> None:
    model = onnx.load(str(sample_model("mobilenet_v2")))
    analysis = analyze(model)
    options = DWOptions(method="bh", target_speedup=1.5)
    ratio = ratio_for_speedup(model, analysis, options)
    assert ratio == 0.27

    def speedup(r: float) -> float:
        return predicted_dw_speedup(plan_dw_layers(model, analysis, DWOptions(method="bh", dw_ratio=r)),
                                    analysis, 32)
    assert speedup(ratio) >= 1.5 > speedup(ratio - 0.01)


def test_target_speedup_on_the_command_line(tmp_path) -> None:
    out = tmp_path / "o.onnx"
    result = run_cli("prune", sample_model("mobilenet_v2"), out, "-q", "--method", "b", "--target-speedup", "1.25",
                     "--format", "dense")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert report["totals"]["predicted_dw_speedup"] >= 1.25
    assert_one_line_error(run_cli("prune", sample_model("mobilenet_v2"), out, "--target-speedup", "0.5"),
                          "--target-speedup")


def test_unreachable_speedup_names_the_option_the_user_gave(tmp_path) -> None:
    """The search's last grid step must not reach ratio 1.0 and blame --dw-ratio, an option nobody passed."""
    from support.cli_testing import assert_one_line_error, run_cli
    from support.samples import sample_model

    result = run_cli("prune", sample_model("mobilenet_v3_small"), tmp_path / "o.onnx", "--target-speedup", "1000")
    assert_one_line_error(result, "--target-speedup 1000.0: not reachable below DW ratio 1")
    assert not (tmp_path / "o.onnx").exists()


def test_speedup_allocation_counts_the_pw_time() -> None:
    """With PW channels removed the target is of DW + PW time (dw/speed.py): the least-KL ratios that reach
    it, checked exhaustively (1.45x: no candidate sits exactly on the target, where the programme's saved time,
    rounded down to 1/4000 of the dense time, is conservative), and less DW pruning than for DW alone."""
    curves = [LayerSensitivity("a", 2880, [0.0, 0.5, 0.9], [0.0, 0.01, 0.05]),
              LayerSensitivity("b", 2880, [0.0, 0.5, 0.9], [0.0, 2.0, 9.0])]
    shapes = {"a": (320, 1, 3, 3), "b": (320, 1, 3, 3)}
    scales = {"a": 10 * 49, "b": 10 * 196}
    alone = _tile_model(shapes, scales)
    dense = sum(alone.dense_time.values())
    blocks = _tile_model(shapes, scales)
    blocks.pw_before, blocks.pw_after = dense, 0.6 * dense        # PW as slow as DW, 40% of it removed
    allocation = allocate_for_speedup(curves, shapes, blocks, 1.45, "bh")
    assert allocation.predicted_dw_speedup >= 1.45
    options = {c.name: candidate_ratios(shapes[c.name], "bh", 0.9) for c in curves}
    best = np.inf
    for combo in itertools.product(*(options[c.name] for c in curves)):
        cost = sum(scales[c.name] * tile_steps(shapes[c.name], np.array([r]))[0] for c, r in zip(curves, combo))
        if 2 * dense / (cost + 0.6 * dense) >= 1.45:
            best = min(best, sum(predicted_loss(c, np.array([r]))[0] for c, r in zip(curves, combo)))
    assert allocation.predicted_total == pytest.approx(best, abs=1e-9)
    assert allocation.achieved_ratio < allocate_for_speedup(curves, shapes, alone, 1.45, "bh").achieved_ratio


def test_the_documented_timings_file_example_loads(tmp_path) -> None:
    """docs/accuracy.md shows the tune file for people who time layers themselves: it must be one the loader reads."""
    import re  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from deprune_onnx.trt.layer_choice import load_timings  # noqa: PLC0415

    text = (Path(__file__).resolve().parents[1] / "docs" / "accuracy.md").read_text(encoding="utf-8")
    block = re.search(r'```json\n(\{"format": "deprune-onnx-timings".*?)```', text, re.S).group(1)
    (tmp_path / "t.json").write_text(block, encoding="utf-8")
    timings = load_timings(tmp_path / "t.json")
    (layer,) = timings.layers.values()
    assert timings.dtype == "float32" and layer.kept_taps == 288 and layer.ours_us < layer.native_us
