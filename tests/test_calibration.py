"""Calibrated reconstruction and sensitivity allocation on the real MobileNetV2, plus their numerics.

Calibration and evaluation images are disjoint: imagenet_00..04 (4 views each = 20 samples; 2 views for the
allocation test, which measures sensitivity on 5 of them) calibrate, imagenet_05..09 (2 views each = 10
samples) measure KL to the unpruned model.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from support.builders import dsconv_model
from support.cli_testing import assert_one_line_error, run_cli
from support.samples import imagenet_samples, sample_model
from deprune_onnx.recovery.allocation import LayerSensitivity, allocate_ratios
from deprune_onnx.analysis import analyze
from deprune_onnx.recovery.refit import (DAMP_GRID, PatchStats, cross_validate_damp, fold_ids, patch_stats,
                                         refit_channels, stacked)
from deprune_onnx.dw.planner import DWOptions
from deprune_onnx.evaluation import ModelRunner
from deprune_onnx.evaluation.images import PRESETS, find_images, load_image_set
from deprune_onnx.evaluation.metrics import agreement_metrics
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.pipeline import PruneOptions, prune_model
from deprune_onnx.recovery.calibration import CalibOptions
from deprune_onnx.recovery.model_check import ModelCheck
from deprune_onnx.recovery.pw_refit import BLOCK_OUTPUT_TARGET
from support.mask_checks import assert_bh_structure, subgemm_slices

CALIB_IMAGES = "imagenet_0[0-4]_*.jpg"
EVAL_IMAGES = "imagenet_0[5-9]_*.jpg"


@pytest.fixture(scope="module")
def mobilenet() -> dict:
    source = onnx.load(str(sample_model("mobilenet_v2")))
    images = load_image_set(find_images([str(imagenet_samples() / EVAL_IMAGES)]), PRESETS["imagenet"], 2)
    return {"source": source, "images": images.inputs, "reference": ModelRunner(source).run(images.inputs)}


def calib(crops: int = 4, **extra) -> CalibOptions:
    return CalibOptions(sources=[str(imagenet_samples() / CALIB_IMAGES)], crops=crops, **extra)


def prune_and_measure(mobilenet: dict, dw: DWOptions, calib_options: CalibOptions | None):
    model = onnx.ModelProto()
    model.CopyFrom(mobilenet["source"])
    result = prune_model(model, PruneOptions(dw=dw, calib=calib_options, output_format="dense"))
    outputs = ModelRunner(model).run(mobilenet["images"])
    return result, agreement_metrics(mobilenet["reference"], outputs)


def test_design_matrix_reproduces_onnxruntime_dw_conv() -> None:
    model = dsconv_model(channels=8, kernel=3, stride=2, multiplier=2, size=11, dilation=2, pads=(1, 2, 2, 1))
    layer = analyze(model).dw_layers[0]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend([onnx.ValueInfoProto(name=layer.input), onnx.ValueInfoProto(name=layer.output)])
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 11, 11)).astype(np.float32)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [session.run([layer.input, layer.output], {"input": sample}) for sample in x]  # static batch 1
    dw_in, dw_out = (np.concatenate(values) for values in zip(*runs))
    index = GraphIndex(model.graph)
    w0 = stacked(index.constant(layer.weight), index.constant(layer.bias))
    stats = patch_stats(dw_in, dw_out, layer)
    assert np.all(stats.residual(w0) <= 1e-5 * stats.target_energy)     # float32 rounding only
    moved = w0.copy()
    moved[:, 4] += 0.1                                                    # the centre tap, any channel
    # The error of moving one tap by d is d^2 * (that tap's input energy): sum over pixels of x^2.
    np.testing.assert_allclose(stats.residual(moved), 0.01 * stats.gram[:, 4, 4], rtol=1e-2)


def test_refit_recovers_weights_that_fit_the_mask_exactly() -> None:
    rng = np.random.default_rng(1)
    design = rng.standard_normal((4, 500, 10))
    design[:, :, -1] = 1.0
    keep = rng.random((4, 9)) < 0.5
    truth = np.where(np.concatenate([keep, np.ones((4, 1), bool)], 1), rng.standard_normal((4, 10)), 0.0)
    y = np.einsum("cmk,ck->cm", design, truth)
    stats = PatchStats(np.einsum("cmk,cml->ckl", design, design), np.einsum("cmk,cm->ck", design, y),
                       np.einsum("cm,cm->c", y, y), 500)
    fitted = refit_channels(stats, rng.standard_normal((4, 10)), keep, damp=0.0)
    np.testing.assert_allclose(fitted, truth, atol=1e-8)
    assert np.all(fitted[:, :-1][~keep] == 0.0)


@pytest.mark.model
def test_reconstruction_at_bh_03_cuts_heldout_kl_at_least_3x(mobilenet: dict) -> None:
    # The paper's beta HSR rule on both runs, so the masks depend on the rule alone and the refit's effect is
    # isolated (with calibration images the default rule measures damage and may choose other layers).
    dw = DWOptions(method="bh", dw_ratio=0.3, hsr_rank="beta")
    plain_result, plain = prune_and_measure(mobilenet, dw, None)
    result, refit = prune_and_measure(mobilenet, dw, calib())
    assert refit.kl_mean * 3 <= plain.kl_mean, (plain, refit)
    assert refit.agreement > plain.agreement
    # Same masks as plain bh, and they pass the same structural checks.
    for plan, plain_plan in zip(result.plan.dw_layers, plain_result.plan.dw_layers):
        assert plan.mask == plain_plan.mask
        refit = result.record.calibration.layers[plan.name]
        assert refit["residual_after"] <= refit["residual_before"]
    index = GraphIndex(mobilenet["source"].graph)
    layers = analyze(mobilenet["source"]).dw_layers
    weights = {layer.name: index.constant(layer.weight) for layer in layers}
    assert_bh_structure(result.plan.dw_layers, weights)
    refit_weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    nodes = {n.name: n for n in result.model.graph.node}
    for plan in result.plan.dw_layers:
        written = refit_weights[nodes[plan.name].input[1]]
        assert not written[~plan.keep_mask()].any()         # pruned taps stay exactly zero
    assert result.record.calibration.samples == 20
    assert result.report["dw_layers"][0]["calibration"]["samples"] == 20


@pytest.mark.model
def test_ratio_zero_with_calibration_changes_nothing(mobilenet: dict) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(mobilenet["source"])
    result = prune_model(model, PruneOptions(dw=DWOptions(method="bh", dw_ratio=0.0),
                                             calib=CalibOptions(sources=[str(imagenet_samples() / CALIB_IMAGES)],
                                                                crops=1),
                                             output_format="dense"))
    before = {t.name: t.SerializeToString() for t in mobilenet["source"].graph.initializer}
    after = {t.name: t.SerializeToString() for t in model.graph.initializer}
    assert before == after and result.record.calibration.layers_refit == 0


@pytest.mark.model
def test_saliency_reselection_keeps_every_k_per_subgemm(mobilenet: dict) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(mobilenet["source"])
    options = CalibOptions(sources=[str(imagenet_samples() / "imagenet_00_*.jpg")], crops=2, saliency=True)
    result = prune_model(model, PruneOptions(dw=DWOptions(method="b", dw_ratio=0.5), calib=options,
                                                     output_format="dense"))
    changed = 0
    for plan in result.plan.dw_layers:
        keep = plan.keep_mask()
        assert [int(keep[s].sum()) for s in subgemm_slices(plan.shape[0])] == plan.kept_per_subgemm
        changed += result.record.calibration.layers[plan.name]["saliency"]
    assert changed == len(result.plan.dw_layers)
    # The saliency-chosen masks are the plan's (the plan is rebuilt, never changed) and the ones applied.
    nodes = {n.name: n for n in result.model.graph.node}
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert all(not weights[nodes[p.name].input[1]][~p.keep_mask()].any() for p in result.plan.dw_layers)


def test_allocation_dp_meets_the_target_and_beats_every_uniform_choice() -> None:
    curves = [LayerSensitivity("a", 1000, [0.0, 0.5, 0.9], [0.0, 0.01, 0.05]),
              LayerSensitivity("b", 1000, [0.0, 0.5, 0.9], [0.0, 2.0, 9.0]),
              LayerSensitivity("c", 2000, [0.0, 0.5, 0.9], [0.0, 0.2, 1.0])]
    shapes = {name: (32, 1, 3, 3) for name in "abc"}
    allocation = allocate_ratios(curves, shapes, 0.5, "b")
    assert abs(allocation.achieved_ratio - 0.5) <= 0.005
    assert allocation.ratios["b"] < allocation.ratios["a"]
    uniform = sum(float(np.interp(0.5, c.ratios, c.kl)) for c in curves)
    assert allocation.predicted_total < uniform
    # Exhaustive check over the 0.05 grid: nothing meeting the target predicts less.
    grid = np.round(np.arange(0, 0.95, 0.05), 6)
    best = min(sum(float(np.interp(r, c.ratios, c.kl)) for r, c in zip(combo, curves))
               for combo in np.array(np.meshgrid(grid, grid, grid)).reshape(3, -1).T
               if abs((combo[0] * 1000 + combo[1] * 1000 + combo[2] * 2000) / 4000 - 0.5) <= 0.005)
    assert allocation.predicted_total == pytest.approx(best, abs=1e-9)


@pytest.mark.model
def test_allocation_with_calibration_at_05_beats_uniform_bh_by_2x(mobilenet: dict) -> None:
    # The paper's beta rule on both sides: this pins what allocation adds; the measured HSR rank (the default
    # with calibration images) has its own comparison in tests/test_hsr_rank.py.
    dw = DWOptions(method="bh", dw_ratio=0.5, hsr_rank="beta")
    _, uniform = prune_and_measure(mobilenet, dw, calib(crops=2))
    result, allocated = prune_and_measure(mobilenet, dw, calib(crops=2, allocate="kl", allocate_samples=5))
    assert allocated.kl_mean * 2 <= uniform.kl_mean, (uniform, allocated)
    assert abs(result.report["totals"]["dw_ratio_achieved"] - 0.5) <= 0.01
    ratios = {p.target_ratio for p in result.plan.dw_layers}
    assert len(ratios) > 1                                    # per-layer ratios differ
    assert result.record.allocation.summary["samples"] == 5
    assert result.report["allocation"]["samples"] == 5
    # measured at temperature 4, every sample scored by a refit fitted without its image (5 images, 5 folds)
    assert result.report["allocation"]["temperature"] == 4.0
    assert result.report["allocation"]["held_out_by_image"] is True
    for plan in result.plan.dw_layers:
        sensitivity = result.record.allocation.layers[plan.name]
        assert sensitivity["chosen_ratio"] == pytest.approx(plan.target_ratio)
        assert sensitivity["why"]


def test_projection_refit_lowers_heldout_kl_and_keeps_the_dw_masks(mobilenet: dict) -> None:
    """On by default with --calib: every pruned block's projection is refit, the ten residual blocks' to their
    block output; the DW masks and the zeros of pruned taps are those of the DW-only refit."""
    dw = DWOptions(method="bh", dw_ratio=0.5, hsr_rank="beta")
    plain_result, plain = prune_and_measure(mobilenet, dw, calib(project=False))
    result, projected = prune_and_measure(mobilenet, dw, calib())
    assert projected.kl_mean < plain.kl_mean, (plain, projected)
    records = result.report["calibration"]["projections"]
    blocks = analyze(mobilenet["source"]).blocks
    assert [r["layer"] for r in records] == [b.project_pw for b in blocks]   # every block's DW is pruned at 0.5
    assert [r["target"] == BLOCK_OUTPUT_TARGET for r in records] == [b.residual_add is not None for b in blocks]
    assert sum(r["target"] == BLOCK_OUTPUT_TARGET for r in records) == 10
    assert all(r["residual_after"] <= r["residual_before"] for r in records)
    assert "projections" not in plain_result.report["calibration"]
    nodes = {n.name: n for n in result.model.graph.node}
    written = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    for plan, plain_plan in zip(result.plan.dw_layers, plain_result.plan.dw_layers):
        assert plan.mask == plain_plan.mask
        assert not written[nodes[plan.name].input[1]][~plan.keep_mask()].any()


def test_projection_refit_option_errors_are_one_line(tmp_path) -> None:
    out = tmp_path / "o.onnx"
    for flag in ("--calib-project", "--no-calib-project"):
        assert_one_line_error(run_cli("prune", sample_model("mobilenet_v2"), out, flag),
                              "--calib-project/--no-calib-project: acts only with calibration images; give --calib DIR")
    assert_one_line_error(run_cli("prune", sample_model("mobilenet_v2"), out, "--calib",
                                  str(imagenet_samples() / CALIB_IMAGES), "--calib-project", "--no-refit"),
                          "--calib-project: refits each projection right after its DW layer's refit, so it needs "
                          "--refit")
    assert not out.exists()


def _stats(design: np.ndarray, y: np.ndarray) -> PatchStats:
    return PatchStats(np.einsum("cmk,cml->ckl", design, design), np.einsum("cmk,cm->ck", design, y),
                      np.einsum("cm,cm->c", y, y), design.shape[1])


def test_cross_validation_picks_a_damping_and_falls_back_when_the_refit_does_not_generalise() -> None:
    rng = np.random.default_rng(3)
    keep = np.ones((2, 9), bool)
    keep[:, :3] = False
    truth = np.concatenate([np.where(keep, rng.standard_normal((2, 9)), 0.0), np.zeros((2, 1))], axis=1)
    w0 = truth.copy()
    w0[:, :3] = 0.5                                     # pruned taps that carried signal: the refit must move
    folds = []
    for _ in range(5):
        design = rng.standard_normal((2, 400, 10))
        design[:, :, :3] = design[:, :, 3:6] + 0.1 * design[:, :, :3]   # neighbouring pixels correlate
        design[:, :, -1] = 1.0
        folds.append(_stats(design, np.einsum("cmk,ck->cm", design, w0)))
    cv = cross_validate_damp(folds, w0, keep)
    assert cv.damp == min(DAMP_GRID)                    # noiseless, plenty of samples: least damping wins
    assert cv.validation_after < 0.1 * cv.validation_before
    # Each fold's target has its own offset: the refit's bias learns the others' mean, which is worse on the
    # held-out fold than the unrefitted weights (nothing pruned that matters, bias 0), at every damping.
    folds = []
    for offset in (3.0, -3.0, 2.0, -2.0, 0.0):
        design = rng.standard_normal((2, 50, 10))
        design[:, :, -1] = 1.0
        folds.append(_stats(design, np.einsum("cmk,ck->cm", design, truth) + offset))
    cv = cross_validate_damp(folds, truth, keep)
    assert cv.validation_after >= cv.validation_before
    assert fold_ids(np.repeat(np.arange(7), 2), 14).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 0, 0, 1, 1]
    assert fold_ids(np.zeros(3, int), 3).tolist() == [0, 1, 2]


def test_auto_damping_records_train_and_validation_residuals_per_layer(mobilenet: dict) -> None:
    dw = DWOptions(method="b", dw_ratio=0.3)
    result, refit = prune_and_measure(mobilenet, dw, calib(crops=2, damp=None))
    _, plain = prune_and_measure(mobilenet, dw, None)
    assert refit.kl_mean * 3 <= plain.kl_mean, (plain, refit)
    assert result.record.calibration.damp == "auto"
    weights = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    source = {t.name: numpy_helper.to_array(t) for t in mobilenet["source"].graph.initializer}
    nodes = {n.name: n for n in result.model.graph.node}
    layers = result.record.calibration.layers
    for plan in result.plan.dw_layers:
        record = layers[plan.name]
        assert record["damp"] in DAMP_GRID and "validation_before" in record and "validation_after" in record
        assert record["refit"] == (record["validation_after"] < record["validation_before"])
        if not record["refit"]:   # kept unrefitted: the masked original weights
            original = source[mobilenet["source"].graph.node[[n.name for n in mobilenet["source"].graph.node]
                                                               .index(plan.name)].input[1]]
            np.testing.assert_array_equal(weights[nodes[plan.name].input[1]], np.where(plan.keep_mask(), original, 0))
    assert result.record.calibration.layers_refit == sum(r["refit"] for r in layers.values())


@pytest.mark.model
def test_a_refit_that_makes_the_whole_model_worse_is_undone(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refit fits layer by layer; recovery/model_check.py keeps it only if the model's own output got closer
    to the unpruned one on the calibration samples. Sabotage the refit (its weights x 3): the output must be the
    unrefitted pruned model, with a warning, and the report must say so."""
    import deprune_onnx.recovery.refit as refit_module

    real = refit_module.reconstruct

    def sabotaged(model, *args, **kwargs):
        model, record = real(model, *args, **kwargs)
        for entry in record.layers:
            layer = GraphIndex(model.graph).node(entry["layer"])
            weight = next(t for t in model.graph.initializer if t.name == layer.input[1])
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 3, weight.name))
        return model, record

    monkeypatch.setattr(refit_module, "reconstruct", sabotaged)
    source = sample_model("mobilenet_v2")
    calibrated = run_cli("prune", source, tmp_path / "calib.onnx", "--method", "b", "--dw-ratio", "0.3", "--format",
                         "dense", "--calib", str(imagenet_samples() / CALIB_IMAGES), "--calib-crops", "1")
    assert calibrated.exit_code == 0, calibrated.output
    assert "the refit made the whole model worse" in calibrated.output and "was undone" in calibrated.output
    plain = run_cli("prune", source, tmp_path / "plain.onnx", "--method", "b", "--dw-ratio", "0.3", "--format",
                    "dense", "-q")
    assert plain.exit_code == 0, plain.output
    weights = [{t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / f"{name}.onnx")).graph.initializer}
               for name in ("calib", "plain")]
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][name], weights[1][name]) for name in weights[0])
    import json  # noqa: PLC0415

    check = json.loads((tmp_path / "calib.report.json").read_text())["calibration"]["model_check"]
    assert check["kept"] == "unrefitted" and check["refitted"] > check["unrefitted"] and check["measure"] == "kl"


def test_model_check_measures_kl_for_class_scores_and_rel_l2_for_maps() -> None:
    from deprune_onnx.recovery.model_check import _distance

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 10))
    assert _distance(logits, logits) == ("kl", 0.0)
    measure, value = _distance(logits, logits + rng.standard_normal((4, 10)))
    assert measure == "kl" and value > 0.05
    maps = rng.standard_normal((2, 3, 8, 8))
    measure, value = _distance(maps, 2 * maps)
    assert measure == "rel_l2" and value == pytest.approx(1.0)


@pytest.mark.parametrize(("unrefitted", "refitted", "kept"), [
    (1e-17, 3e-17, True),          # a model whose output hardly depends on the layers: rounding, not damage
    (0.2, 0.2 + 1e-12, True),
    (0.2, 0.1, True),
    (0.2, 0.2001, False),          # worse by more than rounding: undone
    (0.0, 1e-6, False),
])
def test_the_whole_model_check_ignores_rounding_only(unrefitted: float, refitted: float, kept: bool) -> None:
    assert ModelCheck("kl", unrefitted, refitted, 10).keep_refit is kept


def test_nm24_with_calib_refits_the_model_as_written_and_keeps_every_2_of_4(mobilenet: dict) -> None:
    """--pw-method nm24 is applied before the refit: the whole-model check (and the report) measure the model that
    is written, and the projection refit keeps the 2:4 zeros (before, the masks came after the refit: the report
    showed the KL of a model without them)."""
    from deprune_onnx.evaluation.metrics import kl_divergence, log_probabilities
    from deprune_onnx.options import PWOptions
    from deprune_onnx.recovery.calibration import calibration_set

    model = onnx.ModelProto()
    model.CopyFrom(mobilenet["source"])
    options = calib(crops=2)
    result = prune_model(model, PruneOptions(dw=DWOptions(method="b", dw_ratio=0.5), pw=PWOptions(method="nm24"),
                                             calib=options, output_format="dense"))
    check = result.report["calibration"]["model_check"]
    samples = calibration_set(mobilenet["source"], options).inputs
    written = ModelRunner(result.model).run(samples)
    reference = ModelRunner(mobilenet["source"]).run(samples)
    kl = float(np.mean(kl_divergence(log_probabilities(reference), log_probabilities(written))))
    assert check["kept"] == "refit" and check["refitted"] == pytest.approx(kl, rel=1e-3)
    assert check["refitted"] < check["unrefitted"]
    index = GraphIndex(result.model.graph)
    nodes = {node.name: node for node in result.model.graph.node}
    projections = {record["layer"] for record in result.report["calibration"]["projections"]}
    assert len(projections) == 17
    for layer in analyze(mobilenet["source"]).pw_layers:
        weight = index.constant(nodes[layer.name].input[1])[:, :, 0, 0]
        if weight.shape[1] % 4 == 0:
            nonzero = (weight.reshape(weight.shape[0], -1, 4) != 0).sum(axis=2)
            assert nonzero.max() <= 2, layer.name


def test_the_summary_says_how_many_projections_were_refit(tmp_path) -> None:
    args = ["prune", sample_model("mobilenet_v2"), tmp_path / "o.onnx", "--method", "b", "--dw-ratio", "0.3",
            "--format", "dense", "--calib", str(imagenet_samples() / "imagenet_00_*.jpg"), "--calib-crops", "2"]
    with_projections = run_cli(*args)
    assert with_projections.exit_code == 0, with_projections.output
    assert "refit 17 projection PWs right after their DW layers (10 to the block output through the residual Add)" \
        in with_projections.output
    without = run_cli(*args, "--no-calib-project")
    assert without.exit_code == 0, without.output
    assert "projection PWs" not in without.output and "refit 17 DW layers" in without.output
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert "projections" not in report["calibration"]
