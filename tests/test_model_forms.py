"""Every command that runs a model takes it in every form ``prune`` writes (issue #12 items 3 and 4): float16
(``--dtype float16``: fed float16, as model, as reference, in compare, calibration and finetune) and the plugin
format (DRSparseDepthwiseConv lowered first, in either position of ``compare``, as finetune's teacher).

The models are real ``prune`` outputs of the MobileNetV3-Small text classifier (48x192 input, the fastest sample).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from support.cli_testing import run_cli
from support.samples import imagenet_samples, sample_model

pytestmark = pytest.mark.model
SOURCE = sample_model("mobilenet_v3_small")
CALIB = "imagenet_0[0-4]_*.jpg"
EVAL = "imagenet_0[5-9]_*.jpg"


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same pruning (b, DW PR 0.3) as float32 dense, float16 dense, float32 plugin and float16 plugin."""
    folder = tmp_path_factory.mktemp("forms")
    paths = {}
    for name, args in {"dense": ["--format", "dense"], "dense16": ["--format", "dense", "--dtype", "float16"],
                       "plugin": ["--format", "plugin"], "plugin16": ["--format", "plugin", "--dtype", "float16"]
                       }.items():
        paths[name] = folder / f"{name}.onnx"
        result = run_cli("prune", SOURCE, paths[name], "--method", "b", "--dw-ratio", "0.3", "-q", *args)
        assert result.exit_code == 0, result.output
    assert onnx.load(str(paths["dense16"])).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    return paths


def _eval(*args: object) -> dict:
    result = run_cli("eval", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("model,reference", [("dense16", "dense"), ("dense", "dense16"), ("plugin16", "dense")])
def test_eval_feeds_a_float16_model_float16_as_model_and_as_reference(forms: dict[str, Path], model: str,
                                                                      reference: str) -> None:
    data = _eval(forms[model], "--reference", forms[reference], "--images", imagenet_samples() / EVAL)
    assert data["agreement"]["agreement"] == 1.0                     # the same masks, only the precision differs
    assert 0 < data["errors"]["rel_l2_mean"] < 1e-2


def test_compare_lowers_custom_ops_in_either_position(forms: dict[str, Path]) -> None:
    for original, pruned in (("plugin", "dense"), ("plugin", "plugin"), ("dense", "plugin")):
        result = run_cli("compare", forms[original], forms[pruned], "--n", "2", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["lowered_ops_original"] == (11 if original == "plugin" else 0)
        assert data["lowered_ops"] == (11 if pruned == "plugin" else 0)
        assert data["passed"] and data["sets"][0]["outputs"][0]["max_abs"] < 1e-5  # lowered == dense model


def test_compare_feeds_each_model_its_own_dtype(forms: dict[str, Path]) -> None:
    result = run_cli("compare", forms["plugin16"], forms["dense"], "--n", "2", "--rtol", "1e-2", "--atol", "1e-2",
                     "--images", imagenet_samples() / EVAL, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [s["source"] for s in data["sets"]] == ["random", "images"]
    assert all(0 < s["outputs"][0]["rel_l2"] < 1e-2 for s in data["sets"])


def test_calibration_on_a_float16_model(forms: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "refit16.onnx"
    result = run_cli("prune", forms["dense16"], out, "--method", "b", "--dw-ratio", "0.5", "--format", "dense",
                     "--calib", imagenet_samples() / CALIB, "--calib-crops", "2", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "refit16.report.json").read_text())
    layers = [layer["calibration"] for layer in report["dw_layers"] if layer.get("calibration")]
    assert layers and all(c["residual_after"] < c["residual_before"] for c in layers)
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    data = _eval(out, "--reference", SOURCE, "--images", imagenet_samples() / EVAL)
    assert np.isfinite(data["errors"]["rel_l2_mean"])


@pytest.mark.torch
def test_finetune_a_float16_student_with_a_plugin_teacher(forms: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tuned16.onnx"
    result = run_cli("finetune", forms["dense16"], out, "--teacher", forms["plugin16"], "--images",
                     imagenet_samples() / CALIB, "--epochs", "2", "--batch", "2", "--optimizer", "adam",
                     "--select", "last", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["best_epoch"] == 2 and all(np.isfinite(r["train_loss"]) for r in report["history"][1:])
    tuned = onnx.load(str(out))
    assert tuned.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    from onnx import numpy_helper

    start = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(forms["dense16"])).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in tuned.graph.initializer}
    assert all(after[name].dtype == value.dtype for name, value in start.items() if name in after)
    zero_before = sum(int((v == 0).sum()) for v in start.values() if v.ndim == 4 and v.shape[1] == 1)
    zero_after = sum(int((after[k] == 0).sum()) for k, v in start.items() if v.ndim == 4 and v.shape[1] == 1)
    assert zero_after >= zero_before > 0                                # the DW zeros stay
    assert any(not np.array_equal(after[k], v) for k, v in start.items() if k in after)  # and something trained
    assert _eval(out, "--reference", SOURCE, "--images", imagenet_samples() / EVAL)["agreement"] is not None


def test_sweep_takes_a_plugin_model(forms: dict[str, Path]) -> None:
    result = run_cli("sweep", forms["plugin"], "--images", imagenet_samples() / EVAL, "--ratios", "0.5",
                     "--methods", "b", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert len(rows) == 1 and rows[0]["achieved_ratio"] > 0.3
