"""--target-speedup's speed model (dw/speed.py, issue 14): measured per-layer timings from a `deprune-onnx tune`
file given as --hsr-timings, and the DSConv block (DW + PW time) when PW channels are removed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from support.cli_testing import assert_one_line_error, run_cli
from support.samples import sample_model
from deprune_onnx.analysis import analyze
from deprune_onnx.dw.planner import plan_dw_layers, plan_steps, ratio_for_speedup
from deprune_onnx.dw.speed import BANDWIDTH, PEAK_FLOPS, dense_steps, roofline_us, speed_model
from deprune_onnx.options import DWOptions, PruneOptions, PWOptions
from deprune_onnx.pipeline import prune_model
from deprune_onnx.trt.layer_choice import TIMINGS_FORMAT, load_timings


def _mobilenet_v2() -> tuple[onnx.ModelProto, object]:
    model = onnx.load(str(sample_model("mobilenet_v2")))
    return model, analyze(model)


def _tune_file(path: Path, analysis, native_us: float, ours_us: float, only: int | None = None,
               dtype: str = "float32") -> Path:
    """A hand-written timings file: every DW layer (or the first ``only``) timed with half its taps kept."""
    layers = analysis.dw_layers[:only] if only else analysis.dw_layers
    entries = [{"name": layer.name, "shape": [], "kept_taps": layer.out_channels * 9 // 2, "ours_us": ours_us,
                "native_us": native_us, "ok": True, "max_rel_err": 0.0} for layer in layers]
    path.write_text(json.dumps({"format": TIMINGS_FORMAT, "version": 1, "device": "hand-written", "batch": 1,
                                "dtype": dtype, "command": "test", "date": "-", "layers": entries}))
    return path


def test_roofline_of_one_dw_layer() -> None:
    _, analysis = _mobilenet_v2()
    layer = analysis.dw_layers[0]            # 32 channels, 112x112 in and out, 3x3
    moved = 4 * (32 * 112 * 112 * 2 + 32 * 9 + 32)  # input, output, weights and bias
    flops = 2 * 32 * 112 * 112 * 9
    assert roofline_us(layer, "float32") == pytest.approx(1e6 * max(moved / BANDWIDTH, flops / PEAK_FLOPS["float32"]))


def test_measured_times_replace_the_tile_model(tmp_path: Path) -> None:
    _, analysis = _mobilenet_v2()
    timings = load_timings(_tune_file(tmp_path / "t.json", analysis, native_us=10.0, ours_us=9.0, only=4))
    speed = speed_model(analysis, 32, timings)
    timed, untimed = analysis.dw_layers[0].name, analysis.dw_layers[-1].name
    # half of a full sub-GEMM's 288 taps kept = 144 -> 5 tile steps: the timed mask costs exactly ours_us
    assert speed.time(timed, np.array(5)) == pytest.approx(9.0)
    assert speed.time(timed, np.array(dense_steps(analysis.dw_layers[0], 32))) == pytest.approx(10.0)
    assert speed.time(timed, np.array(1)) == pytest.approx(9.0 / 5)
    assert speed.unit == "us" and "measured" in speed.source[timed] and "median" in speed.source[untimed]
    tile = speed_model(analysis, 32)
    # an untimed layer: its tile-model time at the median us per unit of the timed layers, dense and pruned
    ratios = [10.0 / tile.dense_time[layer.name] for layer in analysis.dw_layers[:4]]
    assert speed.dense_time[untimed] == pytest.approx(tile.dense_time[untimed] * float(np.median(ratios)))


def test_measured_timings_feed_the_uniform_target(tmp_path: Path) -> None:
    """Our kernel measured barely faster than the native conv: 1.3x needs a far higher ratio than the tile
    model says (tile model: 6 of 9 steps, ratio about 1/3; measured 9 us at 5 steps: 4 steps, ratio >= 5/9)."""
    model, analysis = _mobilenet_v2()
    timings = _tune_file(tmp_path / "t.json", analysis, native_us=10.0, ours_us=9.0)
    reports = {}
    for name, extra in (("tile", []), ("measured", ["--hsr-timings", timings])):
        out = tmp_path / f"{name}.onnx"
        result = run_cli("prune", sample_model("mobilenet_v2"), out, "-q", "--method", "b", "--target-speedup",
                         "1.3", "--format", "dense", *extra)
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(out.with_suffix(".report.json").read_text())
    measured, tile = reports["measured"], reports["tile"]
    assert measured["target_speedup"]["predicted"] >= 1.3 and tile["target_speedup"]["predicted"] >= 1.3
    assert "measured" in measured["target_speedup"]["model"] and tile["target_speedup"]["model"] == "tile cost model"
    assert tile["totals"]["dw_ratio_target"] <= 0.35 and measured["totals"]["dw_ratio_target"] >= 5 / 9
    speed = speed_model(analysis, 32, load_timings(timings))
    below = plan_dw_layers(model, analysis, DWOptions(method="b", dw_ratio=measured["totals"]["dw_ratio_target"]
                                                     - 0.01))
    assert speed.speedup(plan_steps(below, 32)) < 1.3


def test_tune_file_errors_are_one_line(tmp_path: Path) -> None:
    _, analysis = _mobilenet_v2()
    timings = _tune_file(tmp_path / "t.json", analysis, 10.0, 9.0)
    out = tmp_path / "o.onnx"
    assert_one_line_error(run_cli("prune", sample_model("mobilenet_v2"), out, "--hsr-timings", timings),
                          "--hsr-timings: measured layer times (a tune file) only feed --target-speedup")
    half = _tune_file(tmp_path / "h.json", analysis, 10.0, 9.0, dtype="float16")
    assert_one_line_error(run_cli("prune", sample_model("mobilenet_v2"), out, "--target-speedup", "1.2",
                                  "--hsr-timings", half), "measured in float16, this prune writes float32")
    other = _tune_file(tmp_path / "o.json", analysis, 10.0, 9.0)
    data = json.loads(other.read_text())
    for entry in data["layers"]:
        entry["name"] = "elsewhere/" + entry["name"]
    other.write_text(json.dumps(data))
    assert_one_line_error(run_cli("prune", sample_model("mobilenet_v2"), out, "--target-speedup", "1.2",
                                  "--hsr-timings", other), "times no DW layer of this model")
    assert not out.exists()


def test_target_covers_the_dsconv_blocks_when_pw_is_removed() -> None:
    original, before = _mobilenet_v2()
    pw = PWOptions(ratio=0.5, align=8, scope="project")
    reduced = onnx.ModelProto()
    reduced.CopyFrom(original)
    prune_model(reduced, PruneOptions(dw=DWOptions(method="bh", dw_ratio=0.0), pw=pw, output_format="dense"))
    after = analyze(reduced)
    speed = speed_model(after, 32, None, "float32", (before.pw_layers, after.pw_layers), before.dw_layers)
    assert 0 < speed.pw_after < speed.pw_before
    assert speed.pw_before == pytest.approx(sum(roofline_us(layer, "float32") for layer in before.pw_layers))
    assert speed.dense_total == pytest.approx(speed.pw_before + sum(roofline_us(layer, "float32")
                                                                    for layer in before.dw_layers))
    assert 1.0 < speed.speedup({}) < 1.4   # PW removal alone
    options = DWOptions(method="bh", target_speedup=1.4)
    ratio = ratio_for_speedup(reduced, after, options, speed)

    def speedup(r: float) -> float:
        return speed.speedup(plan_steps(plan_dw_layers(reduced, after, DWOptions(method="bh", dw_ratio=r)), 32))
    assert speedup(ratio) >= 1.4 > speedup(ratio - 0.01)
    work = onnx.ModelProto()
    work.CopyFrom(original)
    result = prune_model(work, PruneOptions(dw=options, pw=pw, output_format="dense"))
    section = result.report["target_speedup"]
    assert section["predicted"] >= 1.4 and section["model"].startswith("DW + PW")
    assert result.report["totals"]["dw_ratio_target"] == ratio


def test_dw_channels_removed_with_the_pw_count_in_the_dense_time() -> None:
    """--pw-scope all also removes DW channels (an expansion PW's outputs): the speedup's numerator is the
    model before removal, so PW removal alone counts the DW channels it removed."""
    original, before = _mobilenet_v2()
    reduced = onnx.ModelProto()
    reduced.CopyFrom(original)
    prune_model(reduced, PruneOptions(dw=DWOptions(method="bh", dw_ratio=0.0),
                                      pw=PWOptions(ratio=0.3, align=8, scope="all"), output_format="dense"))
    after = analyze(reduced)
    speed = speed_model(after, 32, None, "float32", (before.pw_layers, after.pw_layers), before.dw_layers)
    dw_after = sum(speed.dense_time.values())
    assert dw_after < speed.dense_total - speed.pw_before
    assert speed.speedup({}) == pytest.approx(speed.dense_total / (dw_after + speed.pw_after))
