"""Evaluation: preprocessing presets, labels, metrics, and ``deprune-onnx eval`` on the real MobileNetV2."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from support.cli_testing import run_cli
from support.samples import imagenet_samples, sample_model
from deprune_onnx.errors import DepruneError
from deprune_onnx.evaluation.images import (PRESETS, PreprocessOptions, find_images, image_labels,
                                            label_from_name, preprocess)
from deprune_onnx.evaluation.metrics import agreement_metrics, label_metrics, log_probabilities
from deprune_onnx.evaluation.runner import ModelRunner


def test_imagenet_preset_matches_torchvision_recipe_written_out() -> None:
    path = imagenet_samples() / "imagenet_00_243.jpg"
    image = Image.open(path).convert("RGB")          # 512x512
    resized = np.asarray(image.resize((256, 256), Image.BILINEAR), dtype=np.float32)
    crop = resized[16:240, 16:240] / 255.0
    expected = ((crop - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    got = preprocess(path, PRESETS["imagenet"], views=10)
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    np.testing.assert_allclose(got[5], got[0][:, :, ::-1], atol=1e-6)       # view 5 = flipped centre
    bgr = ((crop[..., ::-1] - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    np.testing.assert_allclose(preprocess(path, PRESETS["pplcnet"])[0], bgr, atol=1e-5)  # pplcnet: BGR
    assert len({got[i].tobytes() for i in range(10)}) == 10


def test_ppocr_preset_keeps_aspect_and_pads_with_zero(tmp_path: Path) -> None:
    path = tmp_path / "line_7.png"
    Image.fromarray(np.full((30, 60, 3), 255, np.uint8)).save(path)        # aspect 2 -> 96 of 192 columns
    tensor = preprocess(path, PRESETS["ppocr-cls"])[0]
    assert tensor.shape == (3, 48, 192)
    np.testing.assert_allclose(tensor[:, :, :96], 1.0)                      # (255/255 - 0.5)/0.5
    assert not tensor[:, :, 96:].any()


def test_labels_from_names_and_from_a_file(tmp_path: Path) -> None:
    paths = find_images([imagenet_samples()])
    assert len(paths) == 10 and label_from_name(paths[0]) == 243
    labels = tmp_path / "labels.txt"
    labels.write_text("# name label\n" + "\n".join(f"{p.name}, {i}" for i, p in enumerate(paths)) + "\n")
    assert image_labels(paths, labels) == list(range(10))
    labels.write_text(f"{paths[0].name} 1\n")
    with pytest.raises(DepruneError, match="no label for"):
        image_labels(paths, labels)
    with pytest.raises(DepruneError, match="matches no file"):
        find_images([str(tmp_path / "*.jpg")])


def test_metrics_on_known_values() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    same = agreement_metrics(logits, logits + 5.0)       # a constant shift changes no probability
    assert same.agreement == 1.0 and same.kl_mean == pytest.approx(0.0, abs=1e-12)
    assert same.cosine_mean == pytest.approx(1.0)
    other = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 0.0]])
    p = np.exp(log_probabilities(logits[:1]))[0]
    q = np.exp(log_probabilities(other[:1]))[0]
    result = agreement_metrics(logits, other)
    assert result.agreement == 0.5
    assert result.kl_mean == pytest.approx(np.sum(p * np.log(p / q)) / 2)
    probabilities = np.exp(log_probabilities(logits))    # softmax outputs are recognised as such
    np.testing.assert_allclose(log_probabilities(probabilities), log_probabilities(logits), atol=1e-9)
    labelled = label_metrics(np.eye(6)[[0, 1, 2]], np.array([0, 1, 3]))
    assert labelled.top1 == pytest.approx(2 / 3) and labelled.top5 == 1.0


@pytest.mark.model
def test_eval_mobilenet_v2_top1_and_full_agreement_with_itself() -> None:
    model = sample_model("mobilenet_v2")
    result = run_cli("eval", model, "--images", imagenet_samples(), "--reference", model, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["samples"] == 10
    assert data["labels"]["top1"] == pytest.approx(0.9)   # 9 of the 10 foolbox samples (README: 90% on 20)
    assert data["labels"]["top5"] == 1.0
    assert data["agreement"]["agreement"] == 1.0
    assert data["agreement"]["kl_mean"] == pytest.approx(0.0, abs=1e-9)
    assert data["agreement"]["cosine_mean"] == pytest.approx(1.0)


@pytest.mark.model
def test_eval_of_a_pruned_model_reports_the_loss_and_checks_thresholds(tmp_path: Path) -> None:
    source = sample_model("mobilenet_v3_small")
    pruned = tmp_path / "pruned.onnx"
    assert run_cli("prune", source, pruned, "--method", "b", "--dw-ratio", "0.5", "-q").exit_code == 0
    images = imagenet_samples() / "imagenet_0[0-3]_*.jpg"
    result = run_cli("eval", pruned, "--reference", source, "--images", images, "--crops", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["preprocess"] == "ppocr-cls" and data["samples"] == 8 and data["labels"] is None
    assert data["agreement"]["kl_mean"] > 0
    failed = run_cli("eval", pruned, "--reference", source, "--images", images, "--max-kl", "0")
    assert failed.exit_code == 1 and "above --max-kl" in failed.output


def test_batch_one_graphs_fall_back_to_single_samples() -> None:
    runner = ModelRunner(onnx.load(str(sample_model("pplcnet"))), "pplcnet", batch_size=4)
    outputs = runner.run(np.zeros((3, 3, 224, 224), np.float32))
    assert outputs.shape == (3, 4) and runner.batch_size == 1


def test_custom_op_models_need_the_lowering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = helper.make_node("DRSparseDepthwiseConv", ["x"], ["y"], domain="deprune", name="dr")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("deprune", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    monkeypatch.setitem(sys.modules, "deprune_onnx.op.lower", None)  # as in a build without the lowering
    result = run_cli("eval", path, "--images", imagenet_samples())
    assert result.exit_code == 2
    assert "deprune_onnx.op.lower is missing" in result.output


def test_compare_images_use_the_guessed_preset_and_mean_std_override() -> None:
    from dataclasses import replace

    from deprune_onnx.evaluation.compare import InputSpec, image_feeds

    paths = find_images(imagenet_samples())[:2]
    ocr = [InputSpec("x", (1, 3, 48, 192), np.dtype(np.float32))]
    feeds, found = image_feeds(ocr, [str(p) for p in paths], 5)
    assert len(feeds) == found == 2
    np.testing.assert_array_equal(feeds[0]["x"], preprocess(paths[0], PRESETS["ppocr-cls"]))
    override, found = image_feeds(ocr, paths, 1, PreprocessOptions(preset="ppocr-cls", mean=(0.0, 0.0, 0.0),
                                                                   std=(1.0, 1.0, 1.0)))
    assert len(override) == 1 and found == 2
    plain = replace(PRESETS["ppocr-cls"], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(override[0]["x"], preprocess(paths[0], plain))


def test_cli_preset_names_are_the_presets() -> None:
    from deprune_onnx.cli import image_options
    from deprune_onnx.evaluation import images
    from deprune_onnx.options import PRESET_NAMES

    assert PRESET_NAMES == image_options.PRESET_NAMES == images.PRESET_NAMES == tuple(PRESETS)
    assert image_options.CHANNEL_ORDERS == images.CHANNEL_ORDERS
    assert image_options.CROP_RULES == images.CROP_RULES


def test_an_image_folder_tree_is_named_in_the_error(tmp_path: Path) -> None:
    """eval reads flat folders; an ImageFolder tree (which finetune reads) is said to be one, with what to give."""
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    with pytest.raises(DepruneError, match=r"holds sub-folders: an ImageFolder tree, which only finetune reads"):
        find_images([tmp_path])
    assert find_images([tmp_path / "cat"]) == [(tmp_path / "cat" / "a.png").resolve()]


def test_imagenet_running_numbers_are_not_labels() -> None:
    """ILSVRC2012_val_00000001.JPEG is validation image 1, not class 1: reading it as a label would give a
    silently wrong top-1 on the standard ImageNet folder."""
    assert label_from_name(Path("ILSVRC2012_val_00000001.JPEG")) is None
    assert label_from_name(Path("ILSVRC2012_test_00012345.JPEG")) is None
    assert label_from_name(Path("imagenet_00_243.jpg")) == 243 and label_from_name(Path("v0013.png")) is None

