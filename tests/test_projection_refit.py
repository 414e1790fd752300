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


def test_the_target_is_the_block_output_only_where_the_projection_feeds_the_residual_add() -> None:
    model = dsconv_network(BLOCKS, size=9, seed=6)
    # Block 3's projection reaches its Add through an Identity: the analysis still sees the residual, but the
    # skip error would have to be mapped back through the node in between, so only the conv output is fitted.
    blocks = analyze(model).blocks
    add = next(node for node in model.graph.node if node.name == blocks[2].residual_add)
    projection_out = next(node for node in model.graph.node if node.name == blocks[2].project_pw).output[0]
    add.input[list(add.input).index(projection_out)] = "identity_out"
    position = [node.name for node in model.graph.node].index(add.name)
    model.graph.node.insert(position, helper.make_node("Identity", [projection_out], ["identity_out"],
                                                       name="between"))
    analysis, plan, masked = _pruned(model)
    assert analysis.blocks[2].residual_add == add.name
    inputs = np.random.default_rng(7).standard_normal((4, 8, 9, 9)).astype(np.float32)
    refit = ProjectionRefit(model, analysis)
    reconstruct(masked, model, analysis, plan.dw_layers, inputs, projections=refit)
    targets = [record["target"] for record in refit.records]
    assert targets == [BLOCK_OUTPUT_TARGET, "conv output", "conv output"]
    assert all(r["residual_after"] < r["residual_before"] for r in refit.records)
    assert all(r["damp"] == PROJECTION_DAMP and r["positions"] > 0 for r in refit.records)


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
