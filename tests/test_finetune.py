"""``deprune-onnx finetune``: conversion, write-back, distillation with fixed masks (CPU mechanism tests).

These need PyTorch and onnx2torch (the ``finetune`` extra, which CI installs). They are a mechanism check, not
an ImageNet claim: a few dozen distillation steps on 7 of the 10 sample images must lower the KL to the teacher
on those images and on the 3 held-out images, keep the pruned weights exactly zero, and give a model that
passes the mask checks and runs in ONNX Runtime.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from support.cli_testing import run_cli
from support.builders import dsconv_model
from support.samples import imagenet_samples, sample_model
from deprune_onnx.analysis import analyze
from deprune_onnx.dw.planner import DWOptions
from deprune_onnx.evaluation.images import PRESETS, TrainingImages, find_images, fit_preset
from deprune_onnx.finetune.convert import batchable, to_torch, write_back
from deprune_onnx.finetune.distill import DistillOptions
from deprune_onnx.finetune.run import finetune_model, input_shape
from deprune_onnx.dw.keep_zeros import plan_keep_zeros
from deprune_onnx.dw.masks import dcp_mask
from deprune_onnx.pipeline import PruneOptions, prune_model
from support.op_testing import run_ort

pytestmark = pytest.mark.torch

IMAGES = imagenet_samples()
# Two OpenMP threads beside ONNX Runtime's pool on a 2-core machine make small convs 10x slower (measured on
# the MobileNetV3-Small classifier: 0.14 s vs 1.7 s per batch of 32); one thread keeps these tests fast.
torch.set_num_threads(1)


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output of a single-input model on ``x``."""
    return run_ort(model, {model.graph.input[0].name: x})[0]


def imagenet_views(paths: list[Path], height: int, width: int) -> TrainingImages:
    """The training views ``finetune`` makes for an ImageNet model of input H x W."""
    return TrainingImages.load(paths, fit_preset(PRESETS["imagenet"], (1, 3, height, width)))


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def distilled() -> dict[str, object]:
    """MobileNetV2 pruned (bh, DW PR 0.3), distilled 24 steps of 4 views from 7 images; 3 images held out."""
    teacher = onnx.load(str(sample_model("mobilenet_v2")))
    pruned = prune_model(onnx.load(str(sample_model("mobilenet_v2"))),
                         PruneOptions(dw=DWOptions(method="bh", dw_ratio=0.3), output_format="dense"))
    student = onnx.ModelProto()
    student.CopyFrom(pruned.model)
    paths = find_images(IMAGES)
    train, held_out = imagenet_views(paths[:7], 224, 224), imagenet_views(paths[7:], 224, 224)
    eval_sets = {"train": train.centre_views(), "held_out": held_out.centre_views(),
                 "held_out_flipped_corners": held_out.corner_flip_views()[::2]}
    result = finetune_model(student, teacher, train, DistillOptions(steps=24, batch=4), pruned.plan,
                            eval_sets=eval_sets)
    return {"pruned": pruned.model, "plan": pruned.plan, "result": result, "teacher": teacher}


def test_distillation_lowers_kl_on_training_and_held_out_images(distilled: dict) -> None:
    result = distilled["result"]
    assert result.labels_used  # imagenet_00_243.jpg: the names carry ImageNet class indices
    for name in ("train", "held_out", "held_out_flipped_corners"):
        assert result.kl_after[name] < 0.8 * result.kl_before[name], (name, result.kl_before, result.kl_after)
    assert np.mean(result.losses[-6:]) < np.mean(result.losses[:6])


def test_pruned_weights_stay_exactly_zero_and_kept_weights_train(distilled: dict) -> None:
    tuned, plan = distilled["result"].model, distilled["plan"]
    before, after = initializers(distilled["pruned"]), initializers(tuned)
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}  # shapes fixed
    weight_of = {n.name: n.input[1] for n in tuned.graph.node if n.op_type == "Conv"}
    changed = []
    assert len(distilled["result"].masked_parameters) == sum(1 for p in plan.dw_layers if not p.keep_mask().all())
    for layer in plan.dw_layers:
        keep = layer.keep_mask()
        weight = after[weight_of[layer.name]]
        assert np.all(weight[~keep] == 0) and not np.any(np.signbit(weight[~keep])), layer.name
        changed.append(np.mean(weight[keep] != before[weight_of[layer.name]][keep]))
    # kept weights did train (channels whose ReLU6 is saturated on every training view get no gradient)
    assert min(changed) > 0 and np.mean(changed) > 0.5, changed
    assert not distilled["result"].frozen


def test_finetuned_model_passes_the_mask_checks_and_runs_in_onnxruntime(distilled: dict) -> None:
    tuned, plan = distilled["result"].model, distilled["plan"]
    onnx.checker.check_model(tuned, full_check=True)
    assert [n.name for n in tuned.graph.node] == [n.name for n in distilled["pruned"].graph.node]
    again = plan_keep_zeros(tuned, analyze(tuned), "bh", 32)
    assert again.violations == {}
    for original, found in zip(plan.dw_layers, again.dw_layers):
        assert np.array_equal(original.keep_mask(), found.keep_mask()), original.name
    x = sample_batch()
    logits = ort_run(tuned, x)
    assert logits.shape == (len(x), 1000) and np.all(np.isfinite(logits))


def sample_batch() -> np.ndarray:
    """One ImageNet view: the shared MobileNetV2 has a static batch of 1."""
    return imagenet_views(find_images(IMAGES)[:1], 224, 224).centre_views().astype(np.float32)


def test_finetuned_model_rewrites_to_plugin_and_lowers_back_exactly(distilled: dict, tmp_path: Path) -> None:
    """fine-tuned dense -> prune --keep-zeros --format plugin -> lower == the fine-tuned dense model."""
    from deprune_onnx.op.lower import lower

    tuned_path, plugin_path = tmp_path / "tuned.onnx", tmp_path / "plugin.onnx"
    onnx.save(distilled["result"].model, str(tuned_path))
    result = run_cli("prune", tuned_path, plugin_path, "--keep-zeros", "--method", "bh", "--format", "plugin",
                     "-q")
    assert result.exit_code == 0, result.output
    plugin = onnx.load(str(plugin_path))
    assert sum(n.op_type == "DRSparseDepthwiseConv" for n in plugin.graph.node) == 17
    lowered = lower(plugin)
    x = sample_batch()
    expected = ort_run(distilled["result"].model, x)
    np.testing.assert_allclose(ort_run(lowered, x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("key", ["mobilenet_v2", "mobilenet_v3_small", "pplcnet"])
def test_conversion_binds_every_weight_and_writes_back_bit_exactly(key: str) -> None:
    model = onnx.load(str(sample_model(key)))
    converted = to_torch(model, key, input_shape(model))
    assert converted.micro_batch is None  # pplcnet's Reshape [1, -1] made batchable
    assert not converted.frozen
    bound = {b.initializer for b in converted.bindings}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert node.input[1] in bound, node.name
    assert initializers(write_back(model, converted)).keys() == initializers(model).keys()
    for name, value in initializers(write_back(model, converted)).items():
        assert np.array_equal(value, initializers(model)[name]), name


def test_batchable_copy_computes_the_same_per_sample() -> None:
    model = onnx.load(str(sample_model("pplcnet")))
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    batched = ort_run(batchable(model), x)
    singles = np.concatenate([ort_run(model, x[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-6)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # input model untouched


def test_finetune_cli_on_a_softmax_model_without_plan(tmp_path: Path) -> None:
    """MobileNetV3-Small text classifier: Softmax output, 2 classes (the image names' labels are unusable),
    masks from the zero pattern (no --plan); writes model, plan and report; pruned weights stay zero."""
    source = sample_model("mobilenet_v3_small")
    pruned = tmp_path / "pruned.onnx"
    assert run_cli("prune", source, pruned, "--method", "b", "--dw-ratio", "0.6", "--format", "dense",
                   "-q").exit_code == 0
    out = tmp_path / "tuned.onnx"
    result = run_cli("finetune", pruned, out, "--teacher", source, "--images", IMAGES, "--steps", "3",
                     "--batch", "4", "--method", "b", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["output_kind"] == "probabilities" and report["labels_used"] is False
    assert len(report["losses"]) == 3 and all(np.isfinite(report["losses"]))
    assert (tmp_path / "tuned.plan.json").is_file() and (tmp_path / "tuned.finetune.json").is_file()
    tuned, start = onnx.load(str(out)), onnx.load(str(pruned))
    before = plan_keep_zeros(start, analyze(start), "b", 32)
    after = plan_keep_zeros(tuned, analyze(tuned), "b", 32)
    assert after.violations == {}
    for old, new in zip(before.dw_layers, after.dw_layers):
        assert np.array_equal(old.keep_mask(), new.keep_mask()), old.name


def test_finetune_without_torch_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    result = run_cli("finetune", tmp_path / "a.onnx", tmp_path / "b.onnx", "--teacher", tmp_path / "t.onnx",
                     "--images", tmp_path)
    assert result.exit_code == 2
    assert "pip install 'deprune-onnx[finetune]'" in result.output


@pytest.mark.parametrize("student,teacher,message", [
    ("mobilenet_v2", "mobilenet_v3_small", "--teacher: input shape"),
    # Same 1x3x224x224 input, 4 vs 1000 outputs.
    ("pplcnet", "mobilenet_v2", "--teacher: 1000 outputs per image, the model has 4"),
])
def test_finetune_rejects_a_teacher_that_does_not_match(tmp_path: Path, student: str, teacher: str,
                                                        message: str) -> None:
    """One line naming --teacher, exit 2, no output file."""
    result = run_cli("finetune", sample_model(student), tmp_path / "o.onnx", "--teacher", sample_model(teacher),
                     "--images", IMAGES, "--steps", "1")
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o.onnx").exists()


def fixed_batch_classifier() -> onnx.ModelProto:
    """A DSConv block + GlobalAveragePool + Reshape whose target [1, -1] comes from a Constant node: a graph
    that only runs batch 1, and that ``batchable`` cannot open (its Reshape target is not an initializer)."""
    model = dsconv_model(channels=3, expand=16, size=16, seed=2)
    graph = model.graph
    graph.node.extend([
        onnx.helper.make_node("GlobalAveragePool", ["project"], ["pooled"], name="pool"),
        onnx.helper.make_node("Constant", [], ["target"], name="target",
                              value=numpy_helper.from_array(np.array([1, -1], dtype=np.int64))),
        onnx.helper.make_node("Reshape", ["pooled", "target"], ["logits"], name="flatten"),
    ])
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3]))
    return model


def test_fixed_batch_graph_trains_one_sample_at_a_time() -> None:
    teacher = fixed_batch_classifier()
    student = fixed_batch_classifier()
    weight = next(t for t in student.graph.initializer if t.name == "w_dw")
    w = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(w * dcp_mask(w, 0.6), "w_dw"))
    assert to_torch(student, "student", (1, 3, 16, 16)).micro_batch == 1
    images = imagenet_views(find_images(IMAGES), 16, 16)
    result = finetune_model(student, teacher, images, DistillOptions(steps=4, batch=3, lr=1e-3), method="dcp")
    assert result.micro_batch == 1 and not result.labels_used  # 3 outputs: ImageNet labels unusable
    assert len(result.losses) == 4 and np.all(np.isfinite(result.losses))
    tuned = initializers(result.model)["w_dw"]
    assert np.array_equal(tuned == 0, dcp_mask(w, 0.6) == 0)
    assert not np.array_equal(tuned, w * dcp_mask(w, 0.6))
