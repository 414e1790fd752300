"""Calibrated PW removal (issue 14): channels chosen by the activation energy they feed their readers, and the
1x1 readers of reduced tensors refit by least squares against the unpruned model."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from support.builders import dsconv_model
from deprune_onnx.pw import apply_pw_plan, build_dependency_graph, plan_pw_pruning
from deprune_onnx.pw.importance import group_importance
from deprune_onnx.recovery.pw_refit import channel_energy, refit_pw_readers


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": sample[None]})[0] for sample in x])


def test_activation_energy_ranks_the_channels_a_reader_actually_receives() -> None:
    model = dsconv_model(channels=16, expand=2)
    graph = build_dependency_graph(model)
    group = next(g for g in graph.groups if "expand_pw" in g.origins)          # 32 hidden channels -> project_pw
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    energy = {"dw_act": np.linspace(1.0, 2.0, 32)}
    energy["dw_act"][[3, 7]] = 0.0                                             # channels that never fire
    scores, rule = group_importance(model, graph, group, set(), energy=energy)
    columns = np.square(weights["w_project"][:, :, 0, 0]).sum(axis=0)
    assert rule == "activation"
    np.testing.assert_allclose(scores, energy["dw_act"] * columns, rtol=1e-5)
    assert set(np.argsort(scores, kind="stable")[:2]) == {3, 7}
    plan = plan_pw_pruning(model, ratio=0.25, align=8, scope="all", energy=energy)
    hidden = next(g for g in plan.groups if "expand_pw" in g.producers)
    assert hidden.importance == "activation" and {3, 7} <= set(hidden.removed) and len(hidden.removed) == 8
    # Without calibration the l2 filter rule is unchanged.
    assert next(g for g in plan_pw_pruning(model, ratio=0.25, align=8, scope="all").groups
                if "expand_pw" in g.producers).importance == "l2"


def test_refit_of_the_readers_brings_the_reduced_model_back_towards_the_unpruned_one() -> None:
    original = dsconv_model(channels=16, expand=4, size=10, seed=2)
    rng = np.random.default_rng(0)
    calib, held_out = rng.standard_normal((24, 16, 10, 10)).astype(np.float32), \
        rng.standard_normal((8, 16, 10, 10)).astype(np.float32)
    energy = channel_energy(original, calib)
    assert set(energy) == {"dw_act"} and energy["dw_act"].shape == (64,)
    plan = plan_pw_pruning(original, ratio=0.5, align=8, scope="all", energy=energy)
    plain, _ = apply_pw_plan(original, plan)
    refit, _ = apply_pw_plan(original, plan)
    records = refit_pw_readers(refit, original, plan, calib)
    assert [r["layer"] for r in records] == ["project_pw"]
    assert records[0]["residual_after"] < 0.75 * records[0]["residual_before"]
    assert records[0]["positions"] == 24 * 10 * 10
    reference = _run(original, held_out)
    plain_error = np.square(_run(plain, held_out) - reference).sum()
    refit_error = np.square(_run(refit, held_out) - reference).sum()
    assert refit_error < 0.75 * plain_error                                   # on inputs never fitted
    weights = {t.name: numpy_helper.to_array(t) for t in refit.graph.initializer}
    project = next(n for n in refit.graph.node if n.name == "project_pw")
    kept = 64 - len(next(g for g in plan.groups if "expand_pw" in g.producers).removed)
    assert weights[project.input[1]].shape == (16, kept, 1, 1) and weights[project.input[2]].shape == (16,)
