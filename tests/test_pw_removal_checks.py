"""PW removal: plans that do not fit are refused with the exact message, shape annotations stay consistent, and
Split sizes are rewritten for opset-18 ``num_outputs`` Splits when only one part loses channels. Expected values
are literals; the channels removed are zeros the test plants."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.pw import apply_pw_plan
from deprune_onnx.pw.removal import removed_constant_indices
from support.pw_graphs import GraphBuilder, sized_plan
from test_pw_offsets import assert_same_outputs, zero_filters
from test_pw_rules import C, chain, const, groups_with, members, node_of


def plain_chain() -> tuple[onnx.ModelProto, str, list[tuple[str, int, int]]]:
    model, x = chain(lambda g, x: [g.conv(g.relu(x), C, 4)])
    (group,) = groups_with(model, x)
    return model, x, members(group)


@pytest.mark.parametrize("removed, channels", [
    (list(range(C)), C),  # every channel
    ([C], C), ([-1], C), ([0, C], C),  # out of range
    ([1], C + 1),  # the plan's channel count differs from the model's
])
def test_indices_that_do_not_fit_are_refused_with_the_group_size(removed: list[int], channels: int) -> None:
    model, x, group = plain_chain()
    plan = sized_plan([(group, channels, removed)])
    with pytest.raises(DepruneError, match=rf"^PW plan group hand0: removed indices do not fit its {C} channels$"):
        apply_pw_plan(model, plan)


def test_the_last_channel_and_all_but_one_channel_may_be_removed() -> None:
    model, x, group = plain_chain()
    for removed in ([C - 1], list(range(1, C))):
        planted = zero_filters(model, node_of(x), removed)
        pruned, _ = apply_pw_plan(planted, sized_plan([(group, C, removed)]))
        assert_same_outputs(planted, pruned)


def test_a_group_of_another_model_is_refused_naming_its_first_three_tensors() -> None:
    model, x, group = plain_chain()
    other = [("d", 0, C), ("a", 0, C), ("c", 0, C), ("b", 0, C)]
    with pytest.raises(DepruneError) as info:
        apply_pw_plan(model, sized_plan([(other, C, [1])]))
    assert str(info.value) == ("PW plan group hand0 (a, b, c, ...) is not a channel group of this model with the "
                               "same channel counts; was the plan made for another model?")


def test_shape_annotations_of_changed_tensors_are_dropped_and_the_others_kept() -> None:
    model, x, group = plain_chain()
    model = onnx.shape_inference.infer_shapes(model)
    annotated = sorted(v.name for v in model.graph.value_info)
    relu = next(t for t, _, _ in group if t != x)
    assert {x, relu} <= set(annotated)
    planted = zero_filters(model, node_of(x), [0, 7])
    pruned, _ = apply_pw_plan(planted, sized_plan([(group, C, [0, 7])]))
    assert sorted(v.name for v in pruned.graph.value_info) == [n for n in annotated if n not in (x, relu)]
    assert_same_outputs(planted, pruned)


@pytest.mark.parametrize("stale", ["shape", "type"])
def test_a_model_with_a_stale_output_annotation_is_still_pruned(stale: str) -> None:
    """A declared output shape or type that inference contradicts is the input's problem, not a removal bug: the
    removal runs without its self-check instead of failing."""
    model, x, group = plain_chain()
    declared = model.graph.output[0].type.tensor_type
    if stale == "shape":
        declared.shape.dim[1].dim_value = 7  # the reader conv has 4 output channels
    else:
        declared.elem_type = onnx.TensorProto.DOUBLE
    planted = zero_filters(model, node_of(x), [2])
    pruned, _ = apply_pw_plan(planted, sized_plan([(group, C, [2])]))
    assert GraphIndex(pruned.graph).constant(pruned.graph.node[2].input[1]).shape == (C - 1, 8, 1, 1)


def test_an_opset18_split_with_num_outputs_gets_sizes_when_one_part_loses_channels() -> None:
    g = GraphBuilder(seed=7)
    x = g.conv(g.relu(g.conv("input", 3, 8, kernel=3)), 8, C)
    first, second = g.node("Split", [x], outputs=2, axis=1, num_outputs=2)
    out = g.node("Add", [g.conv(first, C // 2, 4), g.conv(second, C // 2, 4)])
    model = g.model("input", [1, 3, 4, 4], [out], opset=18)
    found = sorted(members(group) for group in groups_with(model, x))
    assert found == [sorted([(x, 0, C), (first, 0, 8)]), sorted([(x, 8, C), (second, 0, 8)])]
    planted = zero_filters(model, node_of(x), [9, 14])  # second part's channels 1 and 6
    pruned, _ = apply_pw_plan(planted, sized_plan([(found[1], 8, [1, 6])]))
    assert_same_outputs(planted, pruned)
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    assert [a.name for a in split.attribute] == ["axis"]
    assert GraphIndex(pruned.graph).constant(split.input[1]).tolist() == [8, 6]


def test_in_place_removal_changes_and_returns_the_model_given() -> None:
    model, x, group = plain_chain()
    planted = zero_filters(model, node_of(x), [4])
    expected, _ = apply_pw_plan(planted, sized_plan([(group, C, [4])]))
    pruned, _ = apply_pw_plan(planted, sized_plan([(group, C, [4])]), in_place=True)
    assert pruned is planted and pruned.SerializeToString() == expected.SerializeToString()


def test_a_plan_for_a_group_the_model_cannot_prune_is_refused_with_its_reason() -> None:
    model, x = chain(lambda g, x: [g.relu(x)])
    (group,) = groups_with(model, x)
    relu = next(n.output[0] for n in model.graph.node if n.input[0] == x)
    with pytest.raises(DepruneError) as info:
        apply_pw_plan(model, sized_plan([(members(group), C, [1])]))
    assert str(info.value) == f"PW plan group hand0 cannot be pruned in this model: '{relu}' is a graph output"


def test_a_group_with_nothing_removed_next_to_one_with_removals() -> None:
    model, x = chain(lambda g, x: [g.conv(g.node("Slice", [x, const(g, [-12]), const(g, [C]), const(g, [1])]),
                                          12, 4)])
    y = next(n.output[0] for n in model.graph.node if n.op_type == "Slice")
    planted = zero_filters(model, node_of(x), [5])
    pruned, _ = apply_pw_plan(planted, sized_plan([([(x, 0, C)], 4, []), (sorted([(x, 4, C), (y, 0, 12)]), 12, [1])]))
    assert_same_outputs(planted, pruned)


def test_removed_constant_indices_lists_every_shrunk_constant_with_its_positions() -> None:
    model, x, group = plain_chain()
    names = [n.name for n in model.graph.node]
    pw, reader = node_of(x), names[-1]
    index = GraphIndex(model.graph)
    found = removed_constant_indices(model, sized_plan([(group, C, [1, 5])]))
    assert [(r.node, r.op_type, r.input_index, r.constant, r.shape, {a: p.tolist() for a, p in r.removed.items()})
            for r in found] == [
        (pw, "Conv", 1, index.node(pw).input[1], (C, 8, 1, 1), {0: [1, 5]}),
        (pw, "Conv", 2, index.node(pw).input[2], (C,), {0: [1, 5]}),
        (reader, "Conv", 1, index.node(reader).input[1], (4, C, 1, 1), {1: [1, 5]})]
    keep = found[2].keep_mask()
    assert keep.shape == (4, C, 1, 1) and keep.dtype == bool
    assert np.flatnonzero(~keep[0, :, 0, 0]).tolist() == [1, 5] and keep.sum() == 4 * (C - 2)
    assert removed_constant_indices(model, sized_plan([])) == []
