"""`prune --format auto --timings FILE` (deprune_onnx/trt/layer_choice.py), decided on the CPU from timings files
like `deprune-onnx tune` writes on a GPU: exactly the layers measured faster become the custom op, every other
pruned layer stays Conv with its masked weights, and the report says why for each."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from deprune_onnx.op import spec
from deprune_onnx.plan import load_plan
from deprune_onnx.trt.layer_choice import TIMINGS_FORMAT, decide_rewrites, load_timings, timings_document
from deprune_onnx.trt.layer_bench import LayerResult
from support.cli_testing import assert_one_line_error, run_cli
from support.samples import sample_model

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """MobileNetV3-Small (PP-OCR classifier) pruned bh 0.5 with the plugin format: the model tune would time."""
    folder = tmp_path_factory.mktemp("auto")
    out = folder / "pruned.onnx"
    result = run_cli("prune", sample_model("mobilenet_v3_small"), out, "--method", "bh", "--dw-ratio", "0.5", "-q")
    assert result.exit_code == 0, result.output
    return out, folder / "pruned.plan.json"


def kept_taps(plan_path: Path) -> dict[str, int]:
    return {layer.name: int(layer.keep_mask().sum()) for layer in load_plan(plan_path).dw_layers
            if layer.method != "none"}


def write_timings(path: Path, taps: dict[str, int], faster: set[str], *, dtype: str = "float32",
                  failed: frozenset[str] = frozenset(), skip: frozenset[str] = frozenset(),
                  other_mask: frozenset[str] = frozenset()) -> None:
    results = [LayerResult(layer=name, group="g", shape="s", batch=1, dtype=dtype, kept=0.5, max_rel_err=0.0,
                           poison_left=False, ok=name not in failed, ours_us=2.0 if name in faster else 5.0,
                           cudnn_us=4.0, bytes=1, flops=1, floor_us=1.0)
               for name in taps if name not in skip]
    counts = {name: taps[name] + (1 if name in other_mask else 0) for name in taps}
    path.write_text(json.dumps(timings_document(results, counts, device="test card", batch=1, dtype=dtype,
                                                command="deprune-onnx tune", date="today")))


def custom_nodes(path: Path) -> set[str]:
    return {n.name for n in onnx.load(str(path)).graph.node if n.op_type == spec.OP_TYPE}


def test_auto_rewrites_exactly_the_layers_measured_faster(pruned: tuple[Path, Path], tmp_path: Path) -> None:
    model, plan = pruned
    taps = kept_taps(plan)
    names = sorted(taps)
    assert len(names) >= 6
    faster = set(names[::2])
    failed, skip, other = frozenset(names[1:2]), frozenset(names[3:4]), frozenset(names[5:6])
    faster |= failed | other  # measured faster, but wrong or on another mask: still not rewritten
    write_timings(tmp_path / "t.json", taps, faster, failed=failed, skip=skip, other_mask=other)
    out = tmp_path / "auto.onnx"
    result = run_cli("prune", sample_model("mobilenet_v3_small"), out, "--plan", plan, "--format", "auto",
                     "--timings", tmp_path / "t.json")
    assert result.exit_code == 0, result.output
    expected = set(names[::2]) - failed - other
    assert custom_nodes(out) == expected
    # Every other pruned layer is still a Conv with its masked weights.
    convs = {n.name for n in onnx.load(str(out)).graph.node if n.op_type == "Conv"}
    assert set(names) - expected <= convs
    report = json.loads((tmp_path / "auto.report.json").read_text())
    decisions = {d["layer"]: d for d in report["format_auto"]}
    assert set(decisions) == set(names)
    assert {name for name, d in decisions.items() if d["rewrite"]} == expected
    assert all("failed its correctness check" in decisions[name]["reason"] for name in failed)
    assert all("not in" in decisions[name]["reason"] for name in skip)
    assert all("another mask" in decisions[name]["reason"] for name in other)
    slower = set(names) - faster - skip
    assert all("native 4.0 us <= ours 5.0 us" in decisions[name]["reason"] for name in slower)
    assert f"--format auto: {len(expected)} of {len(names)} pruned DW layer(s)" in result.output
    assert all(f"  {name}: rewritten (ours 2.0 us < native 4.0 us" in result.output for name in expected)


def test_auto_equals_the_dense_model_numerically(pruned: tuple[Path, Path], tmp_path: Path) -> None:
    # The mixed model (some layers custom op, some Conv) computes what the dense-format model computes.
    import onnxruntime as ort

    from deprune_onnx.op.lower import lower

    model, plan = pruned
    taps = kept_taps(plan)
    write_timings(tmp_path / "t.json", taps, set(sorted(taps)[1::2]))
    auto, dense = tmp_path / "auto.onnx", tmp_path / "dense.onnx"
    for out, extra in ((auto, ["--format", "auto", "--timings", tmp_path / "t.json"]), (dense, ["--format", "dense"])):
        result = run_cli("prune", sample_model("mobilenet_v3_small"), out, "--plan", plan, "-q", *extra)
        assert result.exit_code == 0, result.output
    x = np.random.default_rng(0).standard_normal((1, 3, 48, 192)).astype(np.float32)
    outputs = []
    for proto in (lower(onnx.load(str(auto))), onnx.load(str(dense))):
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def test_auto_needs_timings_of_the_same_dtype(pruned: tuple[Path, Path], tmp_path: Path) -> None:
    _, plan = pruned
    source = sample_model("mobilenet_v3_small")
    assert_one_line_error(run_cli("prune", source, tmp_path / "a.onnx", "--format", "auto"),
                          "--format auto and --timings go together")
    write_timings(tmp_path / "f16.json", kept_taps(plan), set(), dtype="float16")
    assert_one_line_error(run_cli("prune", source, tmp_path / "a.onnx", "--plan", plan, "--format", "auto",
                                  "--timings", tmp_path / "f16.json"), "measured in float16")
    assert_one_line_error(run_cli("prune", source, tmp_path / "a.onnx", "--timings", tmp_path / "f16.json"),
                          "go together")
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.parametrize(("content", "needle"), [
    ("not json", "cannot read timings"),
    ('{"format": "other"}', "not a timings file"),
    (json.dumps({"format": TIMINGS_FORMAT, "version": 99}), "timings version 99"),
    (json.dumps({"format": TIMINGS_FORMAT, "version": 1, "batch": 1, "dtype": "float32",
                 "layers": [{"name": "a", "kept_taps": 3, "ours_us": -1, "native_us": 2, "ok": True}]}),
     "must be finite and > 0"),
    (json.dumps({"format": TIMINGS_FORMAT, "version": 1, "batch": 1, "dtype": "float32", "layers": [{}]}),
     "malformed timings"),
])
def test_bad_timings_files_are_one_line_errors(tmp_path: Path, content: str, needle: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert_one_line_error(run_cli("prune", sample_model("mobilenet_v3_small"), tmp_path / "o.onnx", "--format",
                                  "auto", "--timings", bad), needle)


def test_decide_rewrites_skips_excluded_layers(pruned: tuple[Path, Path], tmp_path: Path) -> None:
    _, plan_path = pruned
    plan = load_plan(plan_path)
    taps = kept_taps(plan_path)
    write_timings(tmp_path / "t.json", taps, set(taps))
    first = plan.dw_layers[0]
    first.method = "none"  # as --exclude leaves it: never a decision
    decisions = decide_rewrites(plan.dw_layers, load_timings(tmp_path / "t.json"), "float32")
    assert first.name not in {d.layer for d in decisions}
    assert all(d.rewrite for d in decisions) and len(decisions) == len(taps) - 1


def test_tune_without_a_gpu_is_one_line(pruned: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = pruned
    result = run_cli("tune", model, "-o", tmp_path / "t.json", env={"CUDA_VISIBLE_DEVICES": ""})
    assert_one_line_error(result, "CUDA")
    assert not (tmp_path / "t.json").exists()
