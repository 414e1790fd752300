"""``deprune-onnx finetune``: masks kept as they are, streamed data, epochs, validation-driven selection,
checkpoints and resume, BatchNorm statistics, write-back (CPU tests on tiny generated models and the sample
images; the 2-process DDP check is tests/test_finetune_ddp.py).

Every test that trains checks the result against the pruned input independently of the code under test: the
zero pattern of every DW weight is read back from the written ONNX file with numpy and compared to the input's.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from support.cli_testing import assert_one_line_error, run_cli
from support.builders import dsconv_model
from support.finetune_data import CLASSES, image_tree, pruned_tiny_classifier, tiny_classifier
from support.op_testing import run_ort
from support.samples import imagenet_samples, sample_model
from deprune_onnx.analysis import analyze
from deprune_onnx.dw.keep_zeros import plan_keep_zeros
from deprune_onnx.dw.masks import dcp_mask
from deprune_onnx.evaluation.images import PRESETS, fit_preset, preprocess, training_view
from deprune_onnx.finetune.convert import batchable, to_torch, write_back
from deprune_onnx.finetune.data import ImageList, PresetImages, hold_out, list_images
from deprune_onnx.finetune.distributed import Processes
from deprune_onnx.finetune.run import finetune_model, input_shape
from deprune_onnx.finetune.structure import resolve_masks
from deprune_onnx.finetune.train import TrainOptions, lr_factor

pytestmark = pytest.mark.torch
IMAGES = imagenet_samples()
# Two OpenMP threads beside ONNX Runtime's pool on a 2-core machine make small convs 10x slower (measured on
# the MobileNetV3-Small classifier: 0.14 s vs 1.7 s per batch of 32); one thread keeps these tests fast.
torch.set_num_threads(1)
ONE_PROCESS = Processes(0, 1, torch.device("cpu"))
FAST = ["--workers", "0", "--batch", "4", "--optimizer", "adam", "--lr", "1e-3", "-q"]


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output of a single-input model on ``x``."""
    return run_ort(model, {model.graph.input[0].name: x})[0]


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def dw_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Depthwise conv node name -> weight, read straight from the graph (not through the plan code)."""
    values = initializers(model)
    found = {}
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1 and node.input[1] in values:
            found[node.name] = values[node.input[1]]
    return found


def assert_same_masks_and_structure(pruned: onnx.ModelProto, tuned: onnx.ModelProto) -> None:
    """Independent check: same nodes and initializer shapes; every DW zero of ``pruned`` is +0.0 in ``tuned``
    and every non-zero DW weight is still non-zero (the zero pattern is exactly the input's)."""
    assert [(n.name, n.op_type, list(n.input)) for n in pruned.graph.node] == \
        [(n.name, n.op_type, list(n.input)) for n in tuned.graph.node]
    assert {k: v.shape for k, v in initializers(pruned).items()} == \
        {k: v.shape for k, v in initializers(tuned).items()}
    before, after = dw_weights(pruned), dw_weights(tuned)
    assert before.keys() == after.keys() and before
    for name, weight in before.items():
        assert np.array_equal(weight == 0, after[name] == 0), name
        assert not np.any(np.signbit(after[name][weight == 0])), name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny classifier, its bh-unaligned prune (method b, DW PR 0.5, with its sidecar plan), an image tree."""
    return pruned_tiny_classifier(tmp_path_factory.mktemp("tiny"), "b")


def finetune_cli(tiny: dict[str, Path], out: Path, *extra: object, pruned: Path | None = None) -> dict:
    result = run_cli("finetune", pruned or tiny["pruned"], out, "--teacher", tiny["teacher"], "--images",
                     tiny["tree"], *FAST, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(out.with_name(out.stem + ".finetune.json").read_text())


def test_masks_come_from_the_sidecar_plan_and_never_change(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The issue's case: pruned with --method b, fine-tuned without --plan: the plan beside the model is used,
    the masks stay the b masks (a bh re-alignment would change them), the structure check passes, and the
    written plan has the input plan's masks."""
    out = tmp_path / "tuned.onnx"
    report = finetune_cli(tiny, out, "--epochs", "2")
    assert report["masks"]["source"].startswith(str(tiny["plan"])) and report["masks"]["changed_layers"] == {}
    pruned, tuned = onnx.load(str(tiny["pruned"])), onnx.load(str(out))
    assert_same_masks_and_structure(pruned, tuned)
    assert any(not np.array_equal(a, b) for a, b in zip(dw_weights(pruned).values(), dw_weights(tuned).values()))
    plan_in, plan_out = (json.loads(p.read_text()) for p in (tiny["plan"], tmp_path / "tuned.plan.json"))
    assert [l["mask"] for l in plan_in["dw_layers"]] == [l["mask"] for l in plan_out["dw_layers"]]
    # what the old default (align to bh) would have done to these b masks: it changes them
    assert resolve_masks(pruned, None, None, "bh").changed


def test_without_plan_the_zero_pattern_is_kept_as_it_is(tiny: dict[str, Path], tmp_path: Path) -> None:
    alone = tmp_path / "alone.onnx"
    shutil.copyfile(tiny["pruned"], alone)  # no sidecar plan beside it
    out = tmp_path / "tuned.onnx"
    report = finetune_cli(tiny, out, "--epochs", "1", pruned=alone)
    assert report["masks"] == {"source": "zero pattern", "changed_layers": {}}
    assert_same_masks_and_structure(onnx.load(str(alone)), onnx.load(str(out)))


def test_realign_changes_masks_only_when_asked_and_reports_each_layer(tiny: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "tuned.onnx"
    result = run_cli("finetune", tiny["pruned"], out, "--teacher", tiny["teacher"], "--images", tiny["tree"],
                     "--realign", "bh", "--epochs", "1", *FAST[:-1])
    assert result.exit_code == 0, result.output
    pruned = onnx.load(str(tiny["pruned"]))
    expected = plan_keep_zeros(pruned, analyze(pruned), "bh", 32)
    changed = json.loads((tmp_path / "tuned.finetune.json").read_text())["masks"]["changed_layers"]
    assert changed  # the b masks are not tile-aligned
    for layer in expected.dw_layers:
        before = dw_weights(pruned)[layer.name] != 0
        after = dw_weights(onnx.load(str(out)))[layer.name] != 0
        assert np.array_equal(after, layer.keep_mask() & after) and not np.any(after & ~layer.keep_mask())
        if layer.name in changed:
            assert changed[layer.name]["newly_pruned"] == int(np.sum(before & ~layer.keep_mask()))
            assert changed[layer.name]["restored_zero_taps"] == int(np.sum(~before & layer.keep_mask()))
            assert f"{layer.name}: {changed[layer.name]['newly_pruned']} weight(s) newly pruned" in result.output
        else:
            assert np.array_equal(before, layer.keep_mask())


def test_a_plan_that_does_not_fit_the_model_is_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    assert run_cli("prune", tiny["teacher"], other, "--method", "b", "--dw-ratio", "0.7", "--format", "dense",
                   "-q").exit_code == 0
    result = run_cli("finetune", tiny["pruned"], tmp_path / "o.onnx", "--teacher", tiny["teacher"], "--images",
                     tiny["tree"], "--plan", tmp_path / "other.plan.json", *FAST)
    assert_one_line_error(result, "the plan prunes")
    assert not (tmp_path / "o.onnx").exists()


def test_written_model_is_the_best_epoch_and_resume_equals_a_straight_run(tiny: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """Epochs 1-2, then --resume to 3, equals 3 epochs straight (weights and history); the written model's own
    validation KL (ONNX Runtime, recomputed here) is the chosen epoch's; metrics JSON and PNG are written."""
    straight = finetune_cli(tiny, tmp_path / "straight.onnx", "--epochs", "3", "--select", "kl")
    first = finetune_cli(tiny, tmp_path / "resumed.onnx", "--epochs", "2", "--select", "kl")
    assert (tmp_path / "resumed.checkpoints" / "last.pt").is_file()
    resumed = finetune_cli(tiny, tmp_path / "resumed.onnx", "--epochs", "3", "--select", "kl", "--resume")
    assert resumed["training"]["resumed_from"] == 3 and len(resumed["history"]) == 4
    # Resuming a run that already has its epochs trains nothing: refused, not a silent rewrite of the output.
    again = run_cli("finetune", tiny["pruned"], tmp_path / "resumed.onnx", "--teacher", tiny["teacher"], "--images",
                    tiny["tree"], *FAST, "--epochs", "2", "--select", "kl", "--resume")
    assert_one_line_error(again, "--resume: the checkpoint has 3 epoch(s) already, so --epochs 2 trains nothing")
    other_mean = run_cli("finetune", tiny["pruned"], tmp_path / "resumed.onnx", "--teacher", tiny["teacher"],
                         "--images", tiny["tree"], *FAST, "--epochs", "4", "--select", "kl", "--resume",
                         "--mean", "0.5,0.5,0.5")
    assert_one_line_error(other_mean, "was trained with other preprocessing (the fingerprint differs)")
    other_lr = run_cli("finetune", tiny["pruned"], tmp_path / "resumed.onnx", "--teacher", tiny["teacher"],
                       "--images", tiny["tree"], *FAST, "--epochs", "4", "--select", "kl", "--resume", "--lr", "2e-3")
    assert_one_line_error(other_lr, "was trained with other training options (the fingerprint differs)")
    for a, b in zip(straight["history"], resumed["history"]):
        assert a["epoch"] == b["epoch"]
        assert a["val_kl"] == pytest.approx(b["val_kl"], rel=1e-5, abs=1e-7)
    assert first["history"] == resumed["history"][:3] or all(
        a["val_kl"] == pytest.approx(b["val_kl"], rel=1e-6) for a, b in zip(first["history"], resumed["history"]))
    assert straight["best_epoch"] == resumed["best_epoch"]
    a, b = initializers(onnx.load(str(tmp_path / "straight.onnx"))), initializers(
        onnx.load(str(tmp_path / "resumed.onnx")))
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # the chosen epoch, by the chosen metric, and the written model's own validation KL is that epoch's
    best = min(straight["history"], key=lambda r: (r["val_kl"], r["val_loss"]))
    assert straight["best_epoch"] == best["epoch"] and straight["selected_by"] == "val_kl"
    train = list_images(str(tiny["tree"]))
    _, val = hold_out(train, 0.1, 0)
    preset = fit_preset(PRESETS["imagenet"], (1, 3, 16, 16))
    x = np.stack([preprocess(p, preset)[0] for p in val.paths])
    student = ort_run(onnx.load(str(tmp_path / "straight.onnx")), x)
    teacher = ort_run(onnx.load(str(tiny["teacher"])), x)
    log_s = student - np.log(np.exp(student).sum(1, keepdims=True))
    log_t = teacher - np.log(np.exp(teacher).sum(1, keepdims=True))
    kl = float(np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=1)))
    assert kl == pytest.approx(best["val_kl"], rel=1e-3, abs=1e-6)
    assert (tmp_path / "straight.finetune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_when_training_only_hurts_the_pruned_model_itself_is_written(tiny: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """SGD at lr 50 wrecks the student: epoch 0 (the untouched pruned model) is the best and is written."""
    out = tmp_path / "tuned.onnx"
    run = run_cli("finetune", tiny["pruned"], out, "--teacher", tiny["teacher"], "--images", tiny["tree"],
                  "--workers", "0", "--batch", "4", "--optimizer", "sgd", "--lr", "50", "--epochs", "2",
                  "--select", "loss", "--json")
    assert run.exit_code == 0, run.output
    report = json.loads(run.output)
    assert report["best_epoch"] == 0
    assert not any(r["val_loss"] <= report["history"][0]["val_loss"] for r in report["history"][1:])  # or NaN
    pruned, tuned = initializers(onnx.load(str(tiny["pruned"]))), initializers(onnx.load(str(out)))
    for name, value in pruned.items():
        assert np.array_equal(value, tuned[name]), name
    # Without --json the user is told, on stderr, that the output is the input and that the choice is shaky.
    again = run_cli("finetune", tiny["pruned"], tmp_path / "again.onnx", "--teacher", tiny["teacher"], "--images",
                    tiny["tree"], "--workers", "0", "--batch", "4", "--optimizer", "sgd", "--lr", "50", "--epochs",
                    "2", "--select", "loss")
    assert again.exit_code == 0, again.output
    warnings = [line for line in again.stderr.splitlines() if line.startswith("warning: ")]
    assert any("holds the input's weights unchanged" in line for line in warnings), again.stderr
    assert any("validation image(s); with fewer than 20" in line for line in warnings), again.stderr


def test_a_teacher_that_is_not_the_pruned_model_warns(tiny: dict[str, Path], tmp_path: Path) -> None:
    teacher = onnx.load(str(tiny["teacher"]))
    for node in teacher.graph.node:
        node.name = f"other_{node.name}"
    onnx.save(teacher, str(tmp_path / "other.onnx"))
    result = run_cli("finetune", tiny["pruned"], tmp_path / "o.onnx", "--teacher", tmp_path / "other.onnx",
                     "--images", tiny["tree"], *FAST[:-1], "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "shares no Conv node name" in result.stderr
    same = run_cli("finetune", tiny["pruned"], tmp_path / "p.onnx", "--teacher", tiny["teacher"], "--images",
                   tiny["tree"], *FAST[:-1], "--epochs", "1")
    assert same.exit_code == 0 and "shares no Conv node name" not in same.stderr


def test_frozen_parameter_reasons_are_counted_without_names() -> None:
    from deprune_onnx.cli.finetune_cmd import frozen_reasons

    frozen = {"a.bias": "initializer 'onnx::Conv_501' is shared by 3 nodes",
              "b.bias": "initializer 'onnx::Conv_502' is shared by 3 nodes",
              "c.weight": "matches no initializer of its node"}
    assert frozen_reasons(frozen) == " (2: an initializer shared by 3 nodes; 1: matches no initializer of its node)"
    assert frozen_reasons({}) == ""


def test_batchnorm_statistics_train_and_are_written_back(tmp_path: Path) -> None:
    """A model that still has BatchNorm: train mode re-estimates its statistics (written back), pruned DW
    weights stay exactly zero; --batchnorm frozen leaves the statistics as they were."""
    teacher = tiny_classifier(batchnorm=True)
    (tmp_path / "t.onnx").write_bytes(teacher.SerializeToString())
    assert run_cli("prune", tmp_path / "t.onnx", tmp_path / "p.onnx", "--method", "bh", "--dw-ratio", "0.5",
                   "--format", "dense", "-q").exit_code == 0
    tree = image_tree(tmp_path / "tree", per_class=3)
    stats = ("bn.mean", "bn.var")
    for mode, changes in (("auto", True), ("frozen", False)):
        out = tmp_path / f"{mode}.onnx"
        result = run_cli("finetune", tmp_path / "p.onnx", out, "--teacher", tmp_path / "t.onnx", "--images", tree,
                         "--epochs", "1", "--batchnorm", mode, "--select", "kl", *FAST)
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / f"{mode}.finetune.json").read_text())
        assert report["training"]["batchnorm_train"] is changes
        pruned, tuned = onnx.load(str(tmp_path / "p.onnx")), onnx.load(str(out))
        assert_same_masks_and_structure(pruned, tuned)
        if report["best_epoch"] == 1:
            for name in stats:
                same = np.array_equal(initializers(pruned)[name], initializers(tuned)[name])
                assert same is not changes, (mode, name)


def test_image_sources_imagefolder_flat_and_list_file(tmp_path: Path) -> None:
    tree = image_tree(tmp_path / "tree", per_class=2)
    folder = list_images(str(tree))
    assert folder.classes == [f"c{i}" for i in range(CLASSES)]
    assert folder.labels == [i // 2 for i in range(2 * CLASSES)]
    assert all(path.parent.name == f"c{label}" for path, label in zip(folder.paths, folder.labels))
    flat = list_images(str(IMAGES))
    assert [p.name for p in flat.paths][:2] == ["imagenet_00_243.jpg", "imagenet_01_559.jpg"] and \
        flat.labels[:2] == [243, 559]
    listing = tmp_path / "train.txt"
    listing.write_text("# path label\ntree/c1/0.png 1\ntree/c3/1.png 3  # comment\n\n" + f"{folder.paths[0]}\n")
    listed = list_images(str(listing))
    assert listed.paths == [tree / "c1" / "0.png", tree / "c3" / "1.png", folder.paths[0]]
    assert listed.labels == [1, 3, None] and not listed.labelled(CLASSES)
    listing.write_text("tree/c1/0.png one\n")
    with pytest.raises(Exception, match=r"train.txt':1: expected 'path \[label\]'"):
        list_images(str(listing))
    train, val = hold_out(folder, 0.25, seed=3)
    assert len(val.paths) == 2 and not set(train.paths) & set(val.paths)
    assert sorted(train.paths + val.paths) == sorted(folder.paths)


def test_training_views_are_random_resized_crops_seeded_by_sample_and_epoch(tmp_path: Path) -> None:
    tree = image_tree(tmp_path / "tree", per_class=1)
    preset = fit_preset(PRESETS["imagenet"], (1, 3, 16, 16))
    data = PresetImages(list_images(str(tree)), preset, augment=True, seed=5)
    first = [data[i][0] for i in range(len(data))]
    again = [data[i][0] for i in range(len(data))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    data.epoch = 1
    assert not all(torch.equal(a, data[i][0]) for i, a in enumerate(first))
    assert first[0].shape == (3, 16, 16) and data[0][1] == 0
    path = data.images.paths[0]
    box = lambda image: (2, 3, 14, 17)  # noqa: E731
    plain, mirrored = training_view(path, preset, box), training_view(path, preset, box, flipped=True)
    np.testing.assert_array_equal(mirrored, plain[:, :, ::-1])
    whole = training_view(path, preset)  # no window, no flip: the image resized to H x W and normalised
    assert whole.shape == (3, 16, 16) and whole.dtype == np.float32
    validation = PresetImages(data.images, preset, augment=False)
    np.testing.assert_array_equal(validation[0][0].numpy(), preprocess(path, preset)[0])


def test_schedules() -> None:
    paper = TrainOptions(schedule="step", epochs=65, step_epochs=30)
    assert [lr_factor(paper, epoch * 10, 10) for epoch in (0, 29, 30, 59, 60)] == \
        pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cosine = TrainOptions(schedule="cosine", epochs=2)
    assert [lr_factor(cosine, step, 10) for step in (0, 10, 20)] == pytest.approx([1, 0.5, 0])


def test_bad_options_are_one_line_errors(tiny: dict[str, Path], tmp_path: Path) -> None:
    base = ["finetune", tiny["pruned"], tmp_path / "o.onnx", "--teacher", tiny["teacher"], "--images", tiny["tree"]]
    assert_one_line_error(run_cli(*base, "--batch", "5", "--accumulate", "2", "--workers", "0"),
                          "--batch 5: must be a multiple")
    assert_one_line_error(run_cli(*base, "--resume", "--workers", "0"), "--resume: no checkpoint")
    assert_one_line_error(run_cli(*base, "--plan", tiny["plan"], "--realign", "bh"), "--realign")
    assert_one_line_error(run_cli(*base, "--val-images", tiny["tree"], "--val-fraction", "0.5"),
                          "--val-fraction and --val-images: give one")
    assert not (tmp_path / "o.onnx").exists()


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


def test_finetune_without_torch_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    result = run_cli("finetune", tmp_path / "a.onnx", tmp_path / "b.onnx", "--teacher", tmp_path / "t.onnx",
                     "--images", tmp_path)
    assert result.exit_code == 2
    assert "pip install 'deprune-onnx[finetune]'" in result.output


@pytest.mark.parametrize("student,teacher,message", [
    ("mobilenet_v2", "mobilenet_v3_small", "--teacher {teacher}: input shape"),
    # Same 1x3x224x224 input, 4 vs 1000 outputs.
    ("pplcnet", "mobilenet_v2", "--teacher {teacher}: 1000 outputs per image, {student} has 4"),
])
def test_finetune_rejects_a_teacher_that_does_not_match(tmp_path: Path, student: str, teacher: str,
                                                        message: str) -> None:
    """One line naming --teacher, exit 2, no output file."""
    result = run_cli("finetune", sample_model(student), tmp_path / "o.onnx", "--teacher", sample_model(teacher),
                     "--images", IMAGES, "--epochs", "1")
    assert result.exit_code == 2
    assert message.format(teacher=sample_model(teacher), student=sample_model(student)) in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_a_teacher_read_through_identity_converts(tiny: dict[str, Path], tmp_path: Path) -> None:
    """PyTorch's exporter reads deduplicated initializers through Identity; onnx2torch needs Conv weights as
    initializers (before: "--teacher: onnx2torch cannot convert it (KeyError: '...dedup')")."""
    teacher = onnx.load(str(tiny["teacher"]))
    nodes = []
    for node in teacher.graph.node:
        if node.op_type == "Conv":
            nodes.append(onnx.helper.make_node("Identity", [node.input[1]], [node.input[1] + ".dedup"]))
            node.input[1] += ".dedup"
        nodes.append(node)
    del teacher.graph.node[:]
    teacher.graph.node.extend(nodes)
    onnx.save(teacher, str(tmp_path / "teacher.onnx"))
    report = finetune_cli({**tiny, "teacher": tmp_path / "teacher.onnx"}, tmp_path / "tuned.onnx")
    assert report["structure_check"].startswith("passed")
    assert onnx.load(str(tmp_path / "teacher.onnx")) == teacher  # the input file is never modified


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
    images = list_images(str(IMAGES))
    train, val = ImageList(images.paths[:6], images.labels[:6]), ImageList(images.paths[6:], images.labels[6:])
    options = TrainOptions(epochs=2, batch=3, optimizer="adam", lr=1e-3, workers=0, select="kl")
    result = finetune_model(student, teacher, train, val, fit_preset(PRESETS["imagenet"], (1, 3, 16, 16)),
                            options, ONE_PROCESS)
    assert result.micro_batch == 1 and not result.labels_used  # 3 outputs: ImageNet labels unusable
    assert result.training.steps_per_epoch == 2 and not result.training.batchnorm_train
    assert all(np.isfinite(r["train_loss"]) for r in result.training.history[1:])
    tuned = initializers(result.model)["w_dw"]
    assert np.array_equal(tuned == 0, dcp_mask(w, 0.6) == 0)
    if result.training.best_epoch > 0:
        assert not np.array_equal(tuned, w * dcp_mask(w, 0.6))


# -- from a new user's trial (session 4) ---------------------------------------------------------------------------
def test_an_unpruned_student_or_the_pruned_model_as_teacher_is_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The files swapped or the wrong one given: one line naming the file, exit 2, nothing written."""
    unpruned = run_cli("finetune", tiny["teacher"], tmp_path / "a.onnx", "--teacher", tiny["teacher"], "--images",
                       tiny["tree"], *FAST, "--epochs", "1")
    assert_one_line_error(unpruned, f"{tiny['teacher']}: nothing is pruned")
    own = run_cli("finetune", tiny["pruned"], tmp_path / "b.onnx", "--teacher", tiny["pruned"], "--images",
                  tiny["tree"], *FAST, "--epochs", "1")
    assert_one_line_error(own, f"--teacher {tiny['pruned']}: has the same weights as")
    assert list(tmp_path.iterdir()) == []


def test_no_plot_writes_no_png_and_the_summary_names_every_file(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "t.onnx"
    result = run_cli("finetune", tiny["pruned"], out, "--teacher", tiny["teacher"], "--images", tiny["tree"],
                     *FAST[:-1], "--epochs", "1", "--no-plot", "--val-images", tiny["tree"])
    assert result.exit_code == 0, result.output
    assert not out.with_name("t.finetune.png").exists() and out.with_name("t.finetune.json").is_file()
    wrote = [line for line in result.stdout.splitlines() if line.startswith("wrote ")]
    assert wrote == [f"wrote {out}, {out.with_name('t.plan.json')}, {out.with_name('t.finetune.json')}"]


def test_whole_steps_drop_the_tail_per_optimizer_step_not_per_micro_batch() -> None:
    """300 samples, loader batch 8 x --accumulate 4: 9 whole steps of 32 (288 samples) in every epoch, as
    --accumulate 1 with a loader batch of 32 would train; fewer samples than one step: all of them."""
    from torch.utils.data import DistributedSampler

    from deprune_onnx.finetune.train import WholeSteps

    data = list(range(300))
    steps = WholeSteps(DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0), 8 * 4)
    indices = list(steps)
    assert len(steps) == len(indices) == 288 and len(set(indices)) == 288
    single = WholeSteps(DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0), 32)
    assert list(single) == indices  # the same samples as --accumulate 1 at the same global batch
    assert len(WholeSteps(DistributedSampler(data[:20], num_replicas=1, rank=0), 32)) == 20


def test_unusable_labels_say_why() -> None:
    images = ImageList([Path("a_1.png"), Path("b_15.png")], [1, 15])
    assert images.label_problem(10) == "b_15.png has label 15, the model has 10 classes"
    assert ImageList([Path("a.png"), Path("b_1.png")], [None, 1]).label_problem(10) == "1 of 2 image(s) have no label"
    assert images.label_problem(16) is None


def test_a_data_loader_worker_error_is_its_own_line() -> None:
    """torch re-raises a worker's error as the same type with the worker's traceback as the message."""
    from deprune_onnx.errors import DepruneError

    wrapped = DepruneError("Caught DepruneError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1, in f\ndeprune_onnx.errors.DepruneError: bad.png: "
                           "cannot read image (OSError: image file is truncated)\n")
    assert str(wrapped) == "bad.png: cannot read image (OSError: image file is truncated)"
    assert str(DepruneError("plain\n text")) == "plain text"


def test_why_labels_are_not_used_is_said_before_training(tiny: dict[str, Path], tmp_path: Path) -> None:
    images = sorted(tiny["tree"].rglob("*.png"))
    listing = tmp_path / "train.txt"
    listing.write_text("".join(f"{path} {CLASSES + 5 if i == 0 else i % CLASSES}\n" for i, path in enumerate(images)))
    result = run_cli("finetune", tiny["pruned"], tmp_path / "t.onnx", "--teacher", tiny["teacher"], "--images",
                     listing, "--val-images", tiny["tree"], *FAST[:-1], "--epochs", "1", "--no-plot")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    said = [i for i, line in enumerate(lines) if line.startswith("labels: not used (training images: ")]
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1"))
    assert said and said[0] < first_epoch
    assert f"has label {CLASSES + 5}, the model has {CLASSES} classes" in lines[said[0]]
