"""``--calib-project``: the projection refit, interleaved with the DW refit and aimed at the block's output.

Hand-built networks (tests/support/dsconv_graphs.py) and random inputs, so the tier needs no images. The oracle
re-runs the whole model in ONNX Runtime before every step and solves the projection's damped least squares from
an explicit target matrix; the pipeline's staged, normal-equation version must give the same weights.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from support.dsconv_graphs import BlockSpec, dsconv_network
from deprune_onnx.analysis import analyze
from deprune_onnx.dw.apply import apply_dw_masks
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.options import DWOptions, PruneOptions
from deprune_onnx.pipeline import make_plan
from deprune_onnx.recovery.pw_refit import BLOCK_OUTPUT_TARGET, PROJECTION_DAMP, ProjectionRefit, _least_squares
from deprune_onnx.recovery.refit import (DEFAULT_DAMP, original_parameters, patch_stats, reconstruct,
                                         refit_channels, stacked)

BLOCKS = [BlockSpec(8, 8, expand=3, residual=True), BlockSpec(8, 12, expand=2, stride=2),
          BlockSpec(12, 12, expand=2, residual=True, activation="relu6")]


def _damped_solution(x: np.ndarray, y: np.ndarray, start: np.ndarray, damp: float) -> np.ndarray:
    """argmin ||[x 1] z - y||^2 + lam ||z - start||^2, lam = damp * mean of diag(x^T x), by an explicit solve."""
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    lam = damp * float(np.mean(np.sum(x * x, axis=0))) + 1e-12
    return np.linalg.solve(design.T @ design + lam * np.eye(design.shape[1]), design.T @ y + lam * start)


def test_least_squares_with_an_offset_fits_the_shifted_target() -> None:
    rng = np.random.default_rng(3)
    xr = rng.standard_normal((400, 6))
    xp = xr[:, :5] + 0.1 * rng.standard_normal((400, 5))
    target_w = rng.standard_normal((4, 7))
    offset = 0.5 * rng.standard_normal((400, 4))
    start = rng.standard_normal((6, 4))
    solution, before, after = _least_squares(xp, xr, target_w, start, 0.3, offset)
    y = np.concatenate([xr, np.ones((400, 1))], axis=1) @ target_w.T + offset
    np.testing.assert_allclose(solution, _damped_solution(xp, y, start, 0.3), rtol=1e-9, atol=1e-12)

    def relative(z: np.ndarray) -> float:
        return float(np.sum((np.concatenate([xp, np.ones((400, 1))], axis=1) @ z - y) ** 2) / np.sum(y ** 2))

    assert before == pytest.approx(relative(start), rel=1e-9)
    assert after == pytest.approx(relative(solution), rel=1e-9)
    assert after < before


def test_least_squares_keeps_the_zeros_it_is_told_to_keep() -> None:
    """``keep`` [out, K]: each output is solved over its own kept weights (and the bias); the rest stay 0."""
    rng = np.random.default_rng(4)
    xr = rng.standard_normal((300, 8))
    xp = xr + 0.2 * rng.standard_normal((300, 8))
    target_w = rng.standard_normal((3, 9))
    keep = np.array([[True, False] * 4, [False, True] * 4, [True] * 8])
    start = np.where(np.append(keep, np.ones((3, 1), bool), axis=1), target_w, 0.0).T
    solution, _, after = _least_squares(xp, xr, target_w, start, 0.3, keep=keep)
    assert not solution[:-1][~keep.T].any()
    y = np.concatenate([xr, np.ones((300, 1))], axis=1) @ target_w.T
    lam = 0.3 * float(np.mean(np.sum(xp * xp, axis=0))) + 1e-12
    design = np.concatenate([xp, np.ones((300, 1))], axis=1)
    for output, row in enumerate(keep):
        free = np.append(row, True)
        d = design[:, free]
        expected = np.linalg.solve(d.T @ d + lam * np.eye(free.sum()), d.T @ y[:, output] + lam * start[free, output])
        np.testing.assert_allclose(solution[free, output], expected, rtol=1e-9, atol=1e-12)
    assert after < 1.0


def _pruned(model: onnx.ModelProto, ratio: float = 0.6):
    analysis = analyze(model)
    plan, _ = make_plan(model, PruneOptions(dw=DWOptions(method="b", dw_ratio=ratio)), analysis, None)
    masked, _ = apply_dw_masks(model, plan.dw_layers)
    return analysis, plan, masked


def _run(model: onnx.ModelProto, inputs: np.ndarray, tensors: list[str]) -> dict[str, np.ndarray]:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend([onnx.ValueInfoProto(name=t) for t in tensors])
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [session.run(tensors, {"input": sample[None]}) for sample in inputs]  # the models' batch is 1
    return {t: np.concatenate([run[i] for run in runs]) for i, t in enumerate(tensors)}


def _positions(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]).astype(np.float64)


def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    position = next(i for i, t in enumerate(model.graph.initializer) if t.name == name)
    model.graph.initializer[position].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def test_interleaved_refit_matches_a_step_by_step_oracle() -> None:
    """DW refit of block 1, its projection (aimed at the block output, skip error included), then block 2 fitted
    on what the corrected block 1 produces, and so on: the staged pipeline equals full re-runs per step."""
    reference = dsconv_network(BLOCKS, size=9, seed=4)
    analysis, plan, masked = _pruned(reference)
    inputs = np.random.default_rng(5).standard_normal((6, 8, 9, 9)).astype(np.float32)
    refit = ProjectionRefit(reference, analysis)
    result, record = reconstruct(masked, reference, analysis, plan.dw_layers, inputs, projections=refit)

    oracle = onnx.ModelProto()
    oracle.CopyFrom(masked)
    index = GraphIndex(reference.graph)
    nodes = {node.name: node for node in reference.graph.node}
    layers = analysis.dw_by_name()
    for block in analysis.blocks:
        layer = layers[block.dw]
        weight, bias = original_parameters(index, layer)
        x = _run(oracle, inputs, [layer.input])[layer.input]
        y = _run(reference, inputs, [layer.output])[layer.output]
        keep = next(p for p in plan.dw_layers if p.name == block.dw).keep_mask().reshape(len(weight), -1)
        fitted = refit_channels(patch_stats(x, y, layer), stacked(weight, bias), keep, DEFAULT_DAMP)
        dw_node = nodes[block.dw]
        _set(oracle, dw_node.input[1], fitted[:, :-1].reshape(weight.shape))
        _set(oracle, dw_node.input[2], fitted[:, -1])
        projection = nodes[block.project_pw]
        w = index.constant(projection.input[1]).astype(np.float64)[:, :, 0, 0]
        b = index.constant(projection.input[2]).astype(np.float64)
        xp = _positions(_run(oracle, inputs, [projection.input[0]])[projection.input[0]])
        target = _positions(_run(reference, inputs, [projection.output[0]])[projection.output[0]])
        if block.residual_add:
            skip = next(t for t in nodes[block.residual_add].input if t != projection.output[0])
            target += _positions(_run(reference, inputs, [skip])[skip]) - _positions(_run(oracle, inputs, [skip])[skip])
        start = np.concatenate([w, b[:, None]], axis=1).T
        solution = _damped_solution(xp, target, start, PROJECTION_DAMP)
        _set(oracle, projection.input[1], solution[:-1].T[:, :, None, None])
        _set(oracle, projection.input[2], solution[-1])

    written = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    expected = {t.name: numpy_helper.to_array(t) for t in oracle.graph.initializer}
    result_nodes = {node.name: node for node in result.graph.node}
    for block in analysis.blocks:
        for name in (block.dw, block.project_pw):
            for slot in (1, 2):
                np.testing.assert_allclose(written[result_nodes[name].input[slot]],
                                           expected[nodes[name].input[slot]], rtol=2e-3, atol=2e-5)
    assert [r["layer"] for r in refit.records] == [b.project_pw for b in analysis.blocks]
    assert len(record.layers) == len(analysis.blocks)


def test_a_batch_norm_between_projection_and_residual_add_scales_the_skip_error() -> None:
    """Block 3's projection reaches its Add through a BatchNormalization (an export that keeps BN): the Add's
    value is a * conv + c + skip, so the conv's target is conv_ref + (skip_ref - skip) / a. Block 2 has no
    residual: its target is its conv output. Oracle for block 3 (the last refit, so the final model's values are
    the ones it was fitted on): the explicit damped least squares."""
    model = dsconv_network(BLOCKS, size=9, seed=6)
    blocks = analyze(model).blocks
    add = next(node for node in model.graph.node if node.name == blocks[2].residual_add)
    projection = next(node for node in model.graph.node if node.name == blocks[2].project_pw)
    add.input[list(add.input).index(projection.output[0])] = "bn_out"
    rng = np.random.default_rng(11)
    a_scale, a_bias = rng.uniform(0.5, 2.0, 12), rng.standard_normal(12)
    a_mean, a_var = rng.standard_normal(12), rng.uniform(0.5, 2.0, 12)
    for name, value in (("bn_scale", a_scale), ("bn_bias", a_bias), ("bn_mean", a_mean), ("bn_var", a_var)):
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    position = [node.name for node in model.graph.node].index(add.name)
    model.graph.node.insert(position, helper.make_node(
        "BatchNormalization", [projection.output[0], "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn_out"],
        name="between", epsilon=1e-3))
    analysis, plan, masked = _pruned(model)
    assert analysis.blocks[2].residual_add == add.name
    inputs = np.random.default_rng(7).standard_normal((5, 8, 9, 9)).astype(np.float32)
    refit = ProjectionRefit(model, analysis)
    result, _ = reconstruct(masked, model, analysis, plan.dw_layers, inputs, projections=refit)
    assert [record["target"] for record in refit.records] == [BLOCK_OUTPUT_TARGET, "conv output", BLOCK_OUTPUT_TARGET]
    assert all(r["residual_after"] < r["residual_before"] for r in refit.records)
    assert all(r["damp"] == PROJECTION_DAMP and r["positions"] > 0 for r in refit.records)

    skip = next(t for t in add.input if t != "bn_out")
    factor = a_scale.astype(np.float32).astype(np.float64) / np.sqrt(a_var.astype(np.float32) + 1e-3)
    xp = _positions(_run(result, inputs, [projection.input[0]])[projection.input[0]])
    skip_error = (_positions(_run(model, inputs, [skip])[skip]) - _positions(_run(result, inputs, [skip])[skip]))
    target = _positions(_run(model, inputs, [projection.output[0]])[projection.output[0]]) + skip_error / factor
    index = GraphIndex(model.graph)
    start = np.concatenate([index.constant(projection.input[1])[:, :, 0, 0],
                            index.constant(projection.input[2])[:, None]], axis=1).T.astype(np.float64)
    expected = _damped_solution(xp, target, start, PROJECTION_DAMP)
    written = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    node = next(n for n in result.graph.node if n.name == projection.name)
    np.testing.assert_allclose(written[node.input[1]][:, :, 0, 0], expected[:-1].T, rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(written[node.input[2]], expected[-1], rtol=2e-3, atol=2e-5)


def test_unpruned_layers_get_no_projection_refit() -> None:
    """A layer the plan leaves dense (ratio 0) is skipped by the DW refit, and so is its projection."""
    reference = dsconv_network(BLOCKS, size=9, seed=8)
    analysis = analyze(reference)
    dense = analysis.blocks[1].dw
    options = PruneOptions(dw=DWOptions(method="b", dw_ratio=0.5, layer_ratios=[(dense, 0.0)]))
    plan, _ = make_plan(reference, options, analysis, None)
    masked, _ = apply_dw_masks(reference, plan.dw_layers)
    inputs = np.random.default_rng(9).standard_normal((3, 8, 9, 9)).astype(np.float32)
    refit = ProjectionRefit(reference, analysis)
    result, _ = reconstruct(masked, reference, analysis, plan.dw_layers, inputs, projections=refit)
    assert [r["layer"] for r in refit.records] == [analysis.blocks[0].project_pw, analysis.blocks[2].project_pw]
    untouched = analysis.blocks[1].project_pw
    before = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    node = next(n for n in result.graph.node if n.name == untouched)
    assert all(np.array_equal(after[name], before[name]) for name in node.input[1:])
