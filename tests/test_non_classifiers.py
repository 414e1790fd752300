"""Models that are not classifiers (issue #12 item 5): the output kind decides the metrics of eval, compare and
sweep and the distillation loss of finetune; compare can judge only the image inputs and says when --n caps
the images.

Models: small generated DSConv nets (tests/support/non_classifiers.py): a detector ending in a sigmoid map
[1, 1, 32, 32] and a recogniser ending in per-step probabilities [1, 32, 8], pruned by ``prune``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from support.cli_testing import assert_one_line_error, run_cli
from support.non_classifiers import constant_map, detector, recogniser
from support.samples import imagenet_samples, sample_model
from deprune_onnx.evaluation.metrics import error_metrics
from deprune_onnx.evaluation.output_kind import CLASS_SCORES, DENSE, SEQUENCE, output_kind

IMAGES = imagenet_samples()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each generated model and its pruned (b, DW PR 0.5, dense) form."""
    folder = tmp_path_factory.mktemp("non_classifiers")
    paths: dict[str, Path] = {}
    for name, build in (("detector", detector), ("recogniser", recogniser), ("constant", constant_map)):
        paths[name] = folder / f"{name}.onnx"
        onnx.save(build(), str(paths[name]))
        paths[f"{name}_pruned"] = folder / f"{name}_pruned.onnx"
        result = run_cli("prune", paths[name], paths[f"{name}_pruned"], "--method", "b", "--dw-ratio", "0.5",
                         "--format", "dense", "-q")
        assert result.exit_code == 0, result.output
    return paths


@pytest.mark.parametrize("shape,kind", [
    ((4, 1000), CLASS_SCORES), ((1, 4, 1, 1), CLASS_SCORES), ((1, 1, 2), CLASS_SCORES),
    ((1, 1, 640, 640), DENSE), ((2, 19, 64, 64), DENSE), ((1, 1), DENSE), ((1, 25, 6625), SEQUENCE),
])
def test_output_kind_from_the_shape(shape: tuple[int, ...], kind: str) -> None:
    assert output_kind(shape) == kind


def test_error_metrics_on_known_values() -> None:
    reference = np.array([[3.0, 4.0], [0.0, 0.0]])
    model = np.array([[3.0, 4.0 + 5.0], [0.0, 0.0]])
    errors = error_metrics(reference, model)
    assert errors.rel_l2_max == pytest.approx(1.0) and errors.rel_l2_mean == pytest.approx(0.5)
    assert errors.max_abs == 5.0
    assert errors.cosine_mean == pytest.approx((45 / (5 * np.sqrt(90)) + 1.0) / 2)


@pytest.mark.parametrize("name,kind,shape", [("detector", "dense", [1, 32, 32]),
                                             ("recogniser", "sequence", [32, 8])])
def test_eval_measures_maps_and_sequences_by_their_errors(models: dict[str, Path], name: str, kind: str,
                                                          shape: list[int]) -> None:
    pruned, source = models[f"{name}_pruned"], models[name]
    result = run_cli("eval", pruned, "--reference", source, "--images", IMAGES, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["output_kind"] == kind and data["output_shape"] == shape
    # the image names carry ImageNet labels (243, ...): no top-1 over a map or a sequence
    assert data["labels"] is None and data["agreement"] is None
    errors = data["errors"]
    assert 0 < errors["rel_l2_mean"] <= errors["rel_l2_max"] and 0 < errors["max_abs"] and errors["cosine_mean"] < 1
    text = run_cli("eval", pruned, "--reference", source, "--images", IMAGES).stdout
    assert "is not class scores" in text and "relative L2 error" in text and "top-1 agreement" not in text
    assert_one_line_error(run_cli("eval", pruned, "--reference", source, "--images", IMAGES, "--min-agreement",
                                  "0.9"), "--max-rel-error")
    failed = run_cli("eval", pruned, "--reference", source, "--images", IMAGES, "--max-rel-error", "0")
    assert failed.exit_code == 1 and "above --max-rel-error" in failed.output


def test_compare_gives_no_top1_over_a_map(models: dict[str, Path]) -> None:
    source, pruned = models["detector"], models["detector_pruned"]
    result = run_cli("compare", source, pruned, "--n", "2", "--rtol", "1e9", "--atol", "1e9", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)["sets"][0]["outputs"][0]
    assert stats["kind"] == "dense" and stats["top1_agreement"] is None and stats["rel_l2"] > 0
    assert_one_line_error(run_cli("compare", source, pruned, "--min-agreement", "0.5"), "no output is class scores")


def _relu_in_front(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model behind a Relu on its input: equal to it on non-negative inputs (images scaled to 0..1), different
    on standard normal noise."""
    graph = model.graph
    name = graph.input[0].name
    for node in graph.node:
        for slot, value in enumerate(node.input):
            if value == name:
                node.input[slot] = "relu_input"
    graph.node.insert(0, helper.make_node("Relu", [name], ["relu_input"], name="input_relu"))
    return model


def test_compare_judges_only_the_images_and_says_when_n_caps_them(tmp_path: Path) -> None:
    source = sample_model("mobilenet_v3_small")
    other = tmp_path / "relu_first.onnx"
    onnx.save(_relu_in_front(onnx.load(str(source))), str(other))
    common = ["--images", IMAGES, "--mean", "0", "--std", "1", "--n", "3", "--json"]
    everything = run_cli("compare", source, other, *common)
    assert everything.exit_code == 1                              # the random inputs differ
    images_only = run_cli("compare", source, other, *common, "--judge", "images")
    assert images_only.exit_code == 0, images_only.output
    data = json.loads(images_only.stdout)
    random_set, image_set = data["sets"]
    assert not random_set["outputs"][0]["within_tolerance"]       # still run and reported
    assert image_set["outputs"][0]["within_tolerance"] and image_set["samples"] == 3
    assert data["judged"] == "images" and data["notes"] == [
        "images: the first 3 of 10 (by name) were used; --n caps them"]
    assert_one_line_error(run_cli("compare", source, other, "--judge", "images"), "--judge images")


def test_sweep_of_a_detector_reports_errors_not_agreement(models: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("sweep", models["detector"], "--images", IMAGES, "--ratios", "0.3,0.7", "--methods", "b",
                     "-o", tmp_path / "sweep")
    assert result.exit_code == 0, result.output
    assert "rel. L2 error" in result.stdout and "agreement" not in result.stdout
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert [row["output_kind"] for row in rows] == ["dense", "dense"]
    assert all(row["agreement"] is None and row["kl_mean"] is None for row in rows)
    assert 0 < rows[0]["rel_l2_mean"] < rows[1]["rel_l2_mean"]      # pruning more moves the map more
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 0


@pytest.mark.torch
@pytest.mark.parametrize("name,kind", [("detector", "sigmoid"), ("recogniser", "sequence:probabilities")])
def test_finetune_distils_maps_and_sequences(models: dict[str, Path], tmp_path: Path, name: str,
                                             kind: str) -> None:
    out = tmp_path / "tuned.onnx"
    result = run_cli("finetune", models[f"{name}_pruned"], out, "--teacher", models[name], "--images", IMAGES,
                     "--val-images", IMAGES, "--epochs", "6", "--batch", "4", "--optimizer", "adam", "--lr", "1e-3",
                     "--select", "last", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["output_kind"] == kind and report["labels_used"] is False
    assert all(r["train_loss"] > 0 for r in report["history"][1:])
    # validation = the training images' standard views here: the distance to the teacher fell
    assert report["history"][-1]["val_kl"] < report["history"][0]["val_kl"]
    before = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(models[f"{name}_pruned"])).graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    assert any(not np.array_equal(before[k], after[k]) for k in before if k in after)


@pytest.mark.torch
def test_finetune_refuses_a_loss_that_is_identically_zero(models: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("finetune", models["constant_pruned"], tmp_path / "o.onnx", "--teacher", models["constant"],
                     "--images", IMAGES, "--epochs", "1")
    assert_one_line_error(result, "zero whatever the model outputs")
    assert not (tmp_path / "o.onnx").exists()
