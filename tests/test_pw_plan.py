"""Planning rules (alignment, ties, options) and the plan as data: JSON round trip and validation on apply."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import given, strategies as st

from deprune_onnx.errors import DepruneError
from deprune_onnx.pw import PWPlan, aligned_kept_count, apply_pw_plan, plan_pw_pruning, select_removed
from support.pw_graphs import GraphBuilder, random_feeds, run
from test_pw_residual import residual_chain


@given(channels=st.integers(1, 2048), ratio=st.floats(0.0, 0.99), align=st.sampled_from([1, 8, 32]))
def test_kept_count_is_aligned_and_within_one_step_of_the_target(channels, ratio, align):
    kept = aligned_kept_count(channels, ratio, align)
    assert 1 <= kept <= channels
    assert kept % align == 0 or kept == channels
    assert abs(kept - channels * (1 - ratio)) <= align


@pytest.mark.parametrize("channels, ratio, align, kept", [
    (320, 0.5, 32, 160), (144, 0.5, 32, 64), (96, 0.5, 32, 64), (24, 0.5, 32, 24), (40, 0.5, 8, 24),
    (64, 0.0, 32, 64), (3, 0.9, 1, 1)])
def test_kept_count_examples(channels, ratio, align, kept):
    assert aligned_kept_count(channels, ratio, align) == kept


def test_ties_in_importance_go_to_the_lower_index():
    assert select_removed(np.array([1.0, 0.5, 0.5, 2.0, 0.5]), kept=3) == [1, 2]


@pytest.mark.parametrize("options, words", [
    ({"ratio": 1.0}, "--pw-ratio"), ({"ratio": -0.1}, "--pw-ratio"), ({"ratio": 0.5, "align": 0}, "--pw-align"),
    ({"ratio": 0.5, "scope": "expand"}, "--pw-scope")])
def test_bad_options_are_one_line_errors(options, words):
    with pytest.raises(DepruneError, match=words):
        plan_pw_pruning(residual_chain(), **options)


def test_plan_round_trips_through_json_and_applies_identically():
    model = residual_chain()
    plan = plan_pw_pruning(model, ratio=0.5, align=8, scope="all")
    text = json.dumps(plan.to_dict())
    again = PWPlan.from_dict(json.loads(text))
    assert again == plan
    feeds = random_feeds(model)
    np.testing.assert_array_equal(run(apply_pw_plan(model, again)[0], feeds)[0],
                                  run(apply_pw_plan(model, plan)[0], feeds)[0])


def test_apply_never_modifies_its_input():
    model = residual_chain()
    before = model.SerializeToString()
    apply_pw_plan(model, plan_pw_pruning(model, ratio=0.5, align=8, scope="all"))
    assert model.SerializeToString() == before


def test_plan_for_another_model_is_rejected():
    plan = plan_pw_pruning(residual_chain(blocks=3), ratio=0.5, align=8, scope="project")
    with pytest.raises(DepruneError, match="not a channel group of this model"):
        apply_pw_plan(residual_chain(blocks=2), plan)


def test_edited_plans_are_rejected():
    model = residual_chain()
    data = plan_pw_pruning(model, ratio=0.5, align=8, scope="project").to_dict()
    out_of_range = json.loads(json.dumps(data))
    out_of_range["groups"][0]["removed"][-1] = 10_000
    with pytest.raises(DepruneError, match="removed"):
        PWPlan.from_dict(out_of_range)
    with pytest.raises(DepruneError, match="malformed"):
        PWPlan.from_dict({"groups": []})
    wrong_channels = json.loads(json.dumps(data))
    for member in wrong_channels["groups"][0]["members"]:
        member["channels"] += 1
    with pytest.raises(DepruneError, match="not a channel group"):
        apply_pw_plan(model, PWPlan.from_dict(wrong_channels))


def test_shared_weight_is_copied_not_rewritten_for_its_other_user():
    """Two convs read one initializer; only one of them loses channels, the other keeps its full weight."""
    g = GraphBuilder(seed=21)
    x = g.relu(g.conv("input", 3, 16, kernel=3))
    shared = g.const(g.rng.standard_normal((32, 16, 1, 1)).astype(np.float32))
    pruned_branch = g.node("Conv", [x, shared])
    kept_branch = g.node("Conv", [x, shared])
    out = g.node("Add", [g.conv(g.relu(pruned_branch), 32, 4), g.node("ReduceMean", [kept_branch], axes=[1])])
    model = g.model("input", [1, 3, 4, 4], [out])
    plan = plan_pw_pruning(model, ratio=0.5, align=8, scope="all")
    assert any(e.producers == [model.graph.node[2].name] for e in plan.groups)
    pruned, _ = apply_pw_plan(model, plan)
    onnx.checker.check_model(pruned, full_check=True)
    sizes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert sizes[pruned.graph.node[3].input[1]][0] == 32 and sizes[pruned.graph.node[2].input[1]][0] == 16
    assert run(pruned, random_feeds(model))[0].shape == run(model, random_feeds(model))[0].shape
