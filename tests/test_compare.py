"""`deprune-onnx compare` and `deprune-onnx lower` through Click's CliRunner: reports and exit codes."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from support.cli_testing import run_cli as _invoke
from support.op_testing import MODELS_DIR, imagenet_samples, custom_nodes, dense_masked, dw_model, random_masks, run_ort

from deprune_onnx.evaluation.compare import image_feeds, input_specs
from deprune_onnx.op.rewrite import rewrite_to_plugin

RNG = np.random.default_rng(11)
WEIGHT = RNG.standard_normal((40, 1, 3, 3)).astype(np.float32)
PPOCR = MODELS_DIR / "ppocr_mobile_v2_cls_mobilenetv3_small.onnx"


def _save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture()
def tiny(tmp_path):
    """A DW model, its pruned dense form, and that pruned form rewritten to the custom op."""
    mask = RNG.random(WEIGHT.shape) < 0.5
    original = dw_model(WEIGHT, None, activation="relu6", batch=1)
    dense = dw_model(WEIGHT * mask, None, activation="relu6", batch=1)
    plugin, _ = rewrite_to_plugin(dense, {"dw": mask})
    return (_save(original, tmp_path / "original.onnx"), _save(dense, tmp_path / "dense.onnx"),
            _save(plugin, tmp_path / "plugin.onnx"))


def test_rewritten_equals_dense_exit_0(tiny):
    _, dense, plugin = tiny
    result = _invoke("compare", dense, plugin, "--n", "4")
    assert result.exit_code == 0, result.output
    assert "1 DRSparseDepthwiseConv node(s) lowered" in result.stdout and "PASSED" in result.stdout


def test_pruned_differs_from_original_exit_1(tiny):
    original, _, plugin = tiny
    result = _invoke("compare", original, plugin, "--n", "4")
    assert result.exit_code == 1
    assert "FAILED" in result.stdout
    assert result.stderr.count("\n") == 1 and "differs from" in result.stderr


def test_loose_tolerance_passes(tiny):
    original, _, plugin = tiny
    assert _invoke("compare", original, plugin, "--n", "2", "--rtol", "1e9", "--atol", "1e9").exit_code == 0


def classifier(weight: np.ndarray) -> onnx.ModelProto:
    """The DW model followed by global average pooling and Flatten: class scores [1, 40]."""
    model = dw_model(weight, None, batch=1)
    graph = model.graph
    graph.node[-1].output[0] = "maps"
    graph.node.extend([onnx.helper.make_node("GlobalAveragePool", ["maps"], ["pooled"], name="pool"),
                       onnx.helper.make_node("Flatten", ["pooled"], [graph.output[0].name], name="flatten")])
    graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info(graph.output[0].name, onnx.TensorProto.FLOAT,
                                                                [1, weight.shape[0]]))
    return model


def test_min_agreement_alone_replaces_the_tolerance_check(tmp_path):
    original = _save(classifier(WEIGHT), tmp_path / "a.onnx")
    flipped = _save(classifier(-WEIGHT), tmp_path / "b.onnx")  # every class score negated: the arg-max moves
    same = _invoke("compare", original, original, "--min-agreement", "1", "--n", "3", "--json")
    assert same.exit_code == 0
    data = json.loads(same.stdout)
    assert data["passed"] and data["rtol"] is None and data["sets"][0]["outputs"][0]["top1_agreement"] == 1.0
    differ = _invoke("compare", original, flipped, "--min-agreement", "0.9", "--n", "3", "--json")
    assert differ.exit_code == 1
    data = json.loads(differ.stdout)
    assert not data["passed"] and data["sets"][0]["outputs"][0]["top1_agreement"] < 0.9
    assert data["sets"][0]["outputs"][0]["cosine"] == pytest.approx(-1.0)


def test_float16_pruned_model_is_fed_float16(tiny, tmp_path):
    from deprune_onnx.onnx_io.float16 import convert_to_float16

    _, dense, plugin = tiny
    half = _save(convert_to_float16(onnx.load(plugin))[0], tmp_path / "half.onnx")
    assert _invoke("compare", dense, half, "--n", "2").exit_code == 1  # 1e-5 is tighter than float16
    assert _invoke("compare", dense, half, "--n", "2", "--rtol", "1e-2", "--atol", "1e-2").exit_code == 0


@pytest.mark.model
def test_real_model_with_images(tmp_path):
    model = onnx.load(str(PPOCR))
    masks = random_masks(model, keep=0.9, seed=4)
    plugin, _ = rewrite_to_plugin(dense_masked(model, masks), masks)
    result = _invoke("compare", PPOCR, _save(plugin, tmp_path / "p.onnx"), "--images", imagenet_samples(), "--n", "3",
                     "--min-agreement", "0", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(s["source"], s["samples"]) for s in data["sets"]] == [("random", 3), ("images", 3)]
    stats = data["sets"][1]["outputs"][0]
    # The numbers, recomputed here with ONNX Runtime and numpy on the same three preprocessed images.
    feeds, found = image_feeds(input_specs(model), [imagenet_samples()], 3)
    assert found == 10 and data["notes"] == ["images: the first 3 of 10 (by name) were used; --n caps them"]
    original = [run_ort(model, feed)[0].astype(np.float64) for feed in feeds]
    pruned = [run_ort(dense_masked(model, masks), feed)[0].astype(np.float64) for feed in feeds]
    cosines = [float(p.ravel() @ o.ravel() / (np.linalg.norm(p) * np.linalg.norm(o))) for p, o in zip(pruned, original)]
    agreement = np.mean([p.reshape(-1, p.shape[-1]).argmax(-1) == o.reshape(-1, o.shape[-1]).argmax(-1)
                         for p, o in zip(pruned, original)])
    assert stats["cosine"] == pytest.approx(np.mean(cosines), abs=1e-5) and stats["cosine"] < 1 - 1e-6
    assert stats["top1_agreement"] == pytest.approx(agreement)
    assert stats["max_abs"] == pytest.approx(max(np.abs(p - o).max() for p, o in zip(pruned, original)),
                                             rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("args,message", [
    (["missing.onnx", "{dense}"], "no such file"),
    (["{dense}", "{dense}", "--images", "{tmp}/nope"], "no such file or directory"),
    (["{dense}", "{other_input}"], "differ"),
])
def test_bad_input_exit_2(tiny, tmp_path, args, message):
    model = dw_model(WEIGHT, None, batch=1)
    model.graph.input[0].name = "renamed"
    model.graph.node[0].input[0] = "renamed"
    other = _save(model, tmp_path / "other.onnx")
    args = [a.format(dense=tiny[1], tmp=tmp_path, other_input=other) for a in args]
    result = _invoke("compare", *args)
    assert result.exit_code == 2 and message in result.stderr


def test_inputs_of_another_shape_are_one_line_exit_2(tiny, tmp_path):
    """Before: Polygraphy's log lines and an 'unexpected failure' traceback summary."""
    other = _save(dw_model(WEIGHT, None, batch=1, hw=(12, 12)), tmp_path / "other.onnx")
    result = _invoke("compare", tiny[1], other)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "differ from the original's" in result.stderr, result.stderr
    assert "[1, 40, 12, 12]" in result.stderr and "[1, 40, 9, 11]" in result.stderr


def test_outputs_below_atol_are_judged_by_relative_l2(tmp_path):
    """Untrained weights give outputs far below atol: the elementwise check could never fail there."""
    mask = RNG.random(WEIGHT.shape) < 0.5
    original = _save(dw_model(WEIGHT * 1e-9, None, batch=1), tmp_path / "original.onnx")
    pruned = _save(dw_model(WEIGHT * mask * 1e-9, None, batch=1), tmp_path / "pruned.onnx")
    result = _invoke("compare", original, pruned, "--n", "4")
    assert result.exit_code == 1, result.output
    assert "cannot fail; judged by relative L2 error" in result.stdout
    assert "relative L2 error" in result.stderr and "> rtol=1e-05" in result.stderr
    assert _invoke("compare", original, original, "--n", "4").exit_code == 0


def test_lower_command(tiny, tmp_path):
    _, dense, plugin = tiny
    out = tmp_path / "lowered.onnx"
    result = _invoke("lower", plugin, out)
    assert result.exit_code == 0 and "lowered 1" in result.stdout
    lowered = onnx.load(str(out))
    assert not custom_nodes(lowered)
    x = {"X": RNG.standard_normal((1, 40, 9, 11)).astype(np.float32)}
    assert np.array_equal(run_ort(lowered, x)[0], run_ort(onnx.load(dense), x)[0])
    assert _invoke("lower", plugin, plugin).exit_code == 2  # never overwrite the input
    unchanged = _invoke("lower", dense, tmp_path / "copy.onnx")
    assert unchanged.exit_code == 0 and "no DRSparseDepthwiseConv" in unchanged.stderr
