"""``deprune-onnx prune`` end to end: dense output correctness, ratio 0, determinism, plans, bad input."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from support.cli_testing import run_cli
from support.builders import dsconv_model
from support.samples import SAMPLE_MODEL, sample_model
from support.op_testing import random_feeds, run_ort

pytestmark = pytest.mark.model


def ort_outputs(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return run_ort(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)), feeds)


def independent_bwt(weight: np.ndarray, ratio: float) -> np.ndarray:
    """BWT written from the paper's words with plain loops: per 32-channel sub-GEMM, zero the
    floor(PR*V + 0.5) smallest |w|, ties by flat position."""
    out = weight.copy()
    for start in range(0, weight.shape[0], 32):
        block = out[start:start + 32].reshape(-1)
        order = sorted(range(block.size), key=lambda i: (abs(float(block[i])), i))
        for i in order[: math.floor(ratio * block.size + 0.5)]:
            block[i] = 0.0
        out[start:start + 32] = block.reshape(out[start:start + 32].shape)
    return out


def test_dense_output_equals_independently_masked_conv(tmp_path: Path) -> None:
    source = sample_model("mobilenet_v3_small")
    out = tmp_path / "pruned.onnx"
    result = run_cli("prune", source, out, "--method", "b", "--dw-ratio", "0.5", "--format", "dense", "-q")
    assert result.exit_code == 0, result.output
    original, pruned = onnx.load(str(source)), onnx.load(str(out))
    expected = onnx.load(str(source))
    pruned_weights = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    dw_nodes = [n for n in original.graph.node if n.op_type == "Conv"
                and next(a.i for a in n.attribute if a.name == "group") > 1]
    assert len(dw_nodes) == 11
    for tensor in expected.graph.initializer:
        if any(tensor.name == n.input[1] for n in dw_nodes):
            masked = independent_bwt(numpy_helper.to_array(tensor), 0.5)
            np.testing.assert_array_equal(pruned_weights[tensor.name], masked)
            tensor.CopyFrom(numpy_helper.from_array(masked, tensor.name))
    feeds = random_feeds(original)
    for got, want in zip(ort_outputs(pruned, feeds), ort_outputs(expected, feeds)):
        np.testing.assert_array_equal(got, want)
    assert not np.allclose(ort_outputs(original, feeds)[0], ort_outputs(pruned, feeds)[0])


def test_ratio_zero_output_is_bit_identical(tmp_path: Path, any_sample_model: Path) -> None:
    out = tmp_path / "same.onnx"
    result = run_cli("prune", any_sample_model, out, "--dw-ratio", "0", "--format", "dense", "-q")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(any_sample_model))
    feeds = random_feeds(model, seed=1)
    for got, want in zip(ort_outputs(out, feeds), ort_outputs(model, feeds)):
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("method", ["dcp", "b", "bh"])
def test_same_input_and_options_give_byte_identical_outputs(tmp_path: Path, method: str) -> None:
    digests = []
    for run in range(2):
        out = tmp_path / f"run{run}" / "out.onnx"
        out.parent.mkdir()
        result = run_cli("prune", SAMPLE_MODEL, out, "--method", method, "--dw-ratio", "0.6", "-q")
        assert result.exit_code == 0, result.output
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in (out, out.with_name("out.report.json"), out.with_name("out.plan.json"))])
    assert digests[0] == digests[1]


def test_plan_round_trip_reapplies_the_same_masks(tmp_path: Path) -> None:
    first = tmp_path / "first.onnx"
    assert run_cli("prune", SAMPLE_MODEL, first, "--method", "bh", "--dw-ratio", "0.78", "-q",
                   "--layer-ratio", "*features.2/*=0.3", "--exclude", "*features.17/*").exit_code == 0
    again = tmp_path / "again.onnx"
    result = run_cli("prune", SAMPLE_MODEL, again, "--plan", tmp_path / "first.plan.json", "-q")
    assert result.exit_code == 0, result.output
    assert first.read_bytes() == again.read_bytes()
    report = json.loads((tmp_path / "first.report.json").read_text())
    rows = {row["name"]: row for row in report["dw_layers"]}
    assert rows["/features/features.17/conv/conv.1/conv.1.0/Conv"]["method"] == "none"
    assert rows["/features/features.17/conv/conv.1/conv.1.0/Conv"]["achieved_ratio"] == 0.0
    assert rows["/features/features.2/conv/conv.1/conv.1.0/Conv"]["target_ratio"] == 0.3
    assert report["totals"]["dw_pattern"] == "8u8o"


def test_report_has_every_layer_and_the_totals(tmp_path: Path) -> None:
    out = tmp_path / "mnv2.onnx"
    result = run_cli("prune", SAMPLE_MODEL, out, "--method", "bh", "--dw-ratio", "0.78")
    assert result.exit_code == 0, result.output
    assert "DW-Pat. 9u8o" in result.stdout
    report = json.loads(out.with_name("mnv2.report.json").read_text())
    assert len(report["dw_layers"]) == 17
    for row in report["dw_layers"]:
        assert row["real_dw"] <= row["achieved_ratio"] + 1e-12
        assert row["predicted_speedup"] == row["tile_steps_dense"] / row["tile_steps_pruned"]
    assert abs(report["totals"]["dw_ratio_achieved"] - 0.78) <= 0.01


def test_input_file_is_never_modified(tmp_path: Path) -> None:
    before = hashlib.sha256(SAMPLE_MODEL.read_bytes()).hexdigest()
    assert run_cli("prune", SAMPLE_MODEL, tmp_path / "o.onnx", "-q").exit_code == 0
    assert hashlib.sha256(SAMPLE_MODEL.read_bytes()).hexdigest() == before


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (prune arguments, a word the one-line error must contain)."""
    random_bytes = tmp_path / "random.onnx"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(SAMPLE_MODEL.read_bytes()[:100_000])
    no_dw = tmp_path / "no_dw.onnx"
    model = dsconv_model()
    model.graph.node.remove(next(n for n in model.graph.node if n.name == "dw"))
    model.graph.node[2].input[0] = "expand_act"
    model.graph.node.remove(next(n for n in model.graph.node if n.name == "dw_relu"))
    model.graph.node[-1].input[0] = "expand_act"
    onnx.save(model, str(no_dw))
    bad_plan = tmp_path / "bad.plan.json"
    bad_plan.write_text("{not json")
    sample = str(SAMPLE_MODEL)
    out = str(tmp_path / "out.onnx")
    return {
        "missing file": ([str(tmp_path / "nope.onnx"), out], "no such file"),
        "not onnx": ([str(random_bytes), out], "not a valid ONNX model"),
        "truncated": ([str(truncated), out], "not a valid ONNX model"),
        "no DW layer": ([str(no_dw), out], "no depthwise conv"),
        "ratio 1.0": ([sample, out, "--dw-ratio", "1.0"], "--dw-ratio"),
        "ratio -0.1": ([sample, out, "--dw-ratio", "-0.1"], "--dw-ratio"),
        "ratio abc": ([sample, out, "--dw-ratio", "abc"], "--dw-ratio"),
        "unknown method": ([sample, out, "--method", "xyz"], "--method"),
        "unreadable plan": ([sample, out, "--plan", str(bad_plan)], "bad.plan.json"),
        "output is input": ([sample, sample], "output path is the input"),
        "layer ratio typo": ([sample, out, "--layer-ratio", "nothing*=0.5"], "--layer-ratio"),
        "missing out dir": ([sample, str(tmp_path / "no" / "out.onnx")], "does not exist"),
    }


def test_every_bad_input_gives_one_line_and_exit_2(tmp_path: Path) -> None:
    sample_digest = hashlib.sha256(SAMPLE_MODEL.read_bytes()).hexdigest()
    for name, (args, needle) in _bad_inputs(tmp_path).items():
        result = run_cli("prune", *args)
        assert result.exit_code == 2, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (name, result.stderr)
        assert "Traceback" not in result.output
        assert not (tmp_path / "out.onnx").exists(), name
        assert not list(tmp_path.glob(".out.onnx*")), name
    assert hashlib.sha256(SAMPLE_MODEL.read_bytes()).hexdigest() == sample_digest


def test_console_script_runs_as_a_real_process(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "deprune_onnx.cli.main", "prune", str(tmp_path / "x.onnx"),
                          str(tmp_path / "y.onnx")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such file" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "deprune_onnx.cli.main", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "prune" in ok.stdout and "inspect" in ok.stdout


def test_measured_hsr_timings_replace_the_tile_model(tmp_path: Path) -> None:
    last = "/features/features.17/conv/conv.1/conv.1.0/Conv"
    first = "/features/features.1/conv/conv.0/conv.0.0/Conv"
    timings = tmp_path / "timings.json"
    # The last layer measured as gaining a lot from alignment (beta = 100 / 930 vectors beats the tile model's
    # 1 / 31 of the early layers), the first as gaining nothing.
    timings.write_text(json.dumps({last: {"time_unaligned_us": 101.0, "time_aligned_us": 1.0}, first: 0.0}))
    out = tmp_path / "t.onnx"
    result = run_cli("prune", SAMPLE_MODEL, out, "--method", "bh", "--dw-ratio", "0.78", "-q", "--format", "dense",
                     "--hsr-timings", timings)
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(out.with_name("t.report.json").read_text())["dw_layers"]}
    assert rows[last]["pattern"] == "o" and rows[last]["alpha_source"] == "measured"
    assert rows[last]["alpha"] == pytest.approx(100.0)
    assert rows[first]["pattern"] == "u"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no such layer": 0.1}))
    result = run_cli("prune", SAMPLE_MODEL, tmp_path / "u.onnx", "--hsr-timings", bad)
    assert result.exit_code == 2 and "not a DW layer" in result.stderr
