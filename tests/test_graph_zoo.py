"""The graph patterns of issue #13 (tests/support/graph_zoo.py) through the real CLI.

For every model the tool accepts: the dense output computes what the input computes with the plan's masks
applied by an inserted Mul in ONNX Runtime (relative error <= 1e-5, on both If branches where there is one), and
lower(plugin output) computes what the dense output computes. Then what each class must show: nested convs listed
as skipped and the shared weight left intact for the body that reads it, shapes through functions, IR 3
constants, folded chains, SAME pads in the op, the QDQ refusal without a speedup claim, empty-layer warnings.
Refusals (one line, exit 2, no file left) are pinned by the bad-input corpus, which holds every zoo case.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx import numpy_helper

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.graph import GraphIndex, node_attributes
from deprune_onnx.op.lower import lower
from deprune_onnx.op.rewrite import rewrite_to_plugin
from deprune_onnx.pipeline import PruneOptions, prune_model
from deprune_onnx.recovery.calibration import CalibOptions
from deprune_onnx.plan import DWLayerPlan, PruningPlan, encode_mask
from deprune_onnx.report.build import empty_subgemm_warnings, format_report_table
from support.cli_testing import run_cli
from support.graph_zoo import DW, OK, ZOO, conv1d_dw, masked_reference, zoo_case, zoo_feeds
from support.op_testing import max_rel_err, run_ort

ACCEPTED = [case for case in ZOO if case.expect == OK]
TOLERANCE = 1e-5


def _prune(tmp_path: Path, name: str, output_format: str, *extra: str) -> tuple[onnx.ModelProto, Path]:
    case = zoo_case(name)
    source = tmp_path / "in.onnx"
    source.write_bytes(case.build().SerializeToString())
    output = tmp_path / f"out_{output_format}.onnx"
    args = ["prune", str(source), str(output), "--format", output_format, "-q", *case.args, *extra]
    if "--dw-ratio" not in case.args:
        args += ["--dw-ratio", "0.5"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return case.build(), output


def _report(output: Path) -> dict:
    return json.loads(output.with_name(output.stem + ".report.json").read_text())


def _plan(output: Path) -> PruningPlan:
    return PruningPlan.from_dict(json.loads(output.with_name(output.stem + ".plan.json").read_text()))


def _feed_variants(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    has_cond = any(v.type.tensor_type.elem_type == onnx.TensorProto.BOOL for v in model.graph.input)
    return [zoo_feeds(model, seed, cond) for seed in (0, 1) for cond in ((True, False) if has_cond else (True,))]


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.name)
def test_dense_equals_masked_reference_and_lowered_plugin_equals_dense(case, tmp_path: Path) -> None:
    original, dense_path = _prune(tmp_path, case.name, "dense")
    _, plugin_path = _prune(tmp_path, case.name, "plugin")
    plan = _plan(dense_path)
    assert plan.dw_layers, case.name
    masks = {layer.name: layer.keep_mask() for layer in plan.dw_layers}
    assert any(not keep.all() for keep in masks.values()), "nothing was pruned: the comparison would be empty"
    reference = masked_reference(original, masks)
    dense, lowered = onnx.load(str(dense_path)), lower(onnx.load(str(plugin_path)))
    onnx.checker.check_model(lowered, full_check=True)
    for feeds in _feed_variants(original):
        want = run_ort(reference, feeds)[0]
        got = run_ort(dense, feeds)[0]
        assert max_rel_err(got, want) <= TOLERANCE, case.name
        assert max_rel_err(run_ort(lowered, feeds)[0], got) <= TOLERANCE, case.name
    # The masks changed the result: the reference is not just the input again.
    unpruned = run_ort(original, _feed_variants(original)[0])[0]
    assert max_rel_err(run_ort(reference, _feed_variants(original)[0])[0], unpruned) > 1e-3


@pytest.mark.parametrize("name,body_convs", [
    ("outer-scope read in If branches", ["else/dw_conv", "then/dw_conv"]),
    ("outer-scope read in a Loop body", ["body/dw_conv"]),
    ("outer-scope read in an If inside a Loop body", ["nested/else/dw_conv", "nested/then/dw_conv"]),
    ("DW weight passed to a model-local function", ["fn/dw_outer_weight", "fn/dw_own_weight"]),
])
def test_a_weight_read_by_a_body_or_function_keeps_its_values_there(name: str, body_convs: list[str],
                                                                     tmp_path: Path) -> None:
    """The top-level DW conv is pruned on a copy of its weight; the original initializer, read by the If/Loop
    body or passed to the function, is byte-identical in the output; the convs inside are listed as skipped."""
    original, output = _prune(tmp_path, name, "dense")
    pruned = onnx.load(str(output))
    dw = next(n for n in original.graph.node if n.name.startswith(DW))
    shared = next(t for t in original.graph.initializer if t.name == dw.input[1])
    assert next(t for t in pruned.graph.initializer if t.name == shared.name) == shared
    assert next(n for n in pruned.graph.node if n.name == dw.name).input[1] != shared.name
    report = _report(output)
    skipped = {row["name"]: row["reason"] for row in report["totals"]["skipped_layers"]}
    assert sorted(skipped) == body_convs
    assert all("not pruned" in reason for reason in skipped.values())
    assert [row["name"] for row in report["dw_layers"]] == [dw.name]


def test_shapes_are_inferred_through_a_model_local_function(tmp_path: Path) -> None:
    """The strided SAME_UPPER DW conv after a function call gets its pads and MACs, and the op is written."""
    _, output = _prune(tmp_path, "DW block in a model-local function, SAME stride 2 after it", "plugin")
    row = _report(output)["dw_layers"][0]
    assert row["macs"] == 32 * 9 * 6 * 6  # 32 channels, 3x3, 12x12 -> 6x6 at stride 2
    model = onnx.load(str(output))
    assert [f.name for f in model.functions] == ["Expand"]
    op = next(n for n in model.graph.node if n.op_type == "DRSparseDepthwiseConv")
    assert list(next(a for a in op.attribute if a.name == "pads").ints) == [0, 0, 1, 1]  # SAME_UPPER: extra after


@pytest.mark.parametrize("name,pads", [("auto_pad SAME_UPPER stride 2, static", [0, 0, 1, 1]),
                                       ("auto_pad SAME_LOWER stride 2, static", [1, 1, 0, 0])])
def test_same_pads_are_resolved_for_the_op(name: str, pads: list[int], tmp_path: Path) -> None:
    """12x12 input, k=3, stride 2: out 6, total padding 1 -> SAME_UPPER puts it after, SAME_LOWER before."""
    _, output = _prune(tmp_path, name, "plugin")
    op = next(n for n in onnx.load(str(output)).graph.node if n.op_type == "DRSparseDepthwiseConv")
    assert list(next(a for a in op.attribute if a.name == "pads").ints) == pads
    assert all(record["rewritten"] for record in _report(output)["rewrite"])


def test_ir3_initializer_inputs_are_pruned_as_constants(tmp_path: Path) -> None:
    original, output = _prune(tmp_path, "IR 3: initializers are graph inputs", "dense")
    pruned = onnx.load(str(output))
    assert original.ir_version == 3 and pruned.ir_version == 7  # the oldest IR version that has opset 13
    assert [v.name for v in pruned.graph.input] == ["input"]


def test_drop_initializer_inputs_removes_exactly_those_inputs(tmp_path: Path) -> None:
    original, output = _prune(tmp_path, "IR 7: initializers are graph inputs, --drop-initializer-inputs", "dense")
    assert len(original.graph.input) == 1 + len(original.graph.initializer)
    assert [v.name for v in onnx.load(str(output)).graph.input] == ["input"]


def test_a_folded_kernel_chain_is_pruned_and_its_nodes_go(tmp_path: Path) -> None:
    original, output = _prune(tmp_path, "DW kernel Reshape(Transpose(HWCM initializer))", "dense")
    pruned = onnx.load(str(output))
    assert {"Transpose", "Reshape"} <= {n.op_type for n in original.graph.node}
    assert not {"Transpose", "Reshape"} & {n.op_type for n in pruned.graph.node}
    assert _report(output)["totals"]["skipped_layers"] == []


def test_qdq_weights_are_refused_by_the_rewrite_without_a_speedup_claim(tmp_path: Path) -> None:
    _, output = _prune(tmp_path, "QDQ int8 DW weight", "plugin")
    report = _report(output)
    (record,) = report["rewrite"]
    assert not record["rewritten"] and record["reason"].startswith("quantized weights")
    assert "float-only" in record["reason"]
    (row,) = report["dw_layers"]
    assert row["rewritten"] is False and row["predicted_speedup"] is None
    assert row["tile_steps_pruned"] == row["tile_steps_dense"]
    assert report["totals"]["predicted_dw_speedup"] is None
    model = onnx.load(str(output))
    dequantize = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    weight = next(t for t in model.graph.initializer if t.name == dequantize.input[0])
    assert weight.data_type == onnx.TensorProto.INT8  # still quantized, masked in its integer form


def test_a_layer_that_keeps_nothing_is_a_warning(tmp_path: Path) -> None:
    _, output = _prune(tmp_path, "DW ratio 0.999", "plugin")
    report = _report(output)
    assert report["dw_layers"][0]["kept_per_subgemm"] == [0, 0]
    (warning,) = report["totals"]["warnings"]
    assert warning.startswith(report["dw_layers"][0]["name"]) and "every weight is pruned" in warning
    assert f"warning: {warning}" in format_report_table(report).splitlines()


def test_empty_subgemms_are_named_with_their_channels() -> None:
    keep = np.zeros((72, 1, 3, 3), bool)
    keep[:32] = True
    keep[64:] = True
    layer = DWLayerPlan(name="dw", weight="w", shape=[72, 1, 3, 3], method="b", target_ratio=0.5,
                        mask=encode_mask(keep), kept_per_subgemm=[288, 0, 72], vectors_per_subgemm=[288, 288, 72])
    assert empty_subgemm_warnings(layer) == [
        "dw: sub-GEMM(s) 1 (channels 32-63) keep no weight, so those channels output act(bias)"]
    layer.kept_per_subgemm = [10, 5, 1]
    assert empty_subgemm_warnings(layer) == []


def test_every_zoo_case_is_in_the_bad_input_corpus() -> None:
    from support.bad_inputs import CASES

    names = {case.name for case in CASES}
    assert all(f"graph zoo: {case.name}" in names for case in ZOO)


def test_a_1d_dw_conv_runs_as_the_ops_1xk_case(tmp_path: Path) -> None:
    """Conv1d [40,1,5], pads (2, 2): the op gets kernel 1x5 and pads (0, 2, 0, 2) between Unsqueeze/Squeeze of
    axis 2; inspect and the report describe the layer as 1x5."""
    _, output = _prune(tmp_path, "1-D DW conv", "plugin")
    model = onnx.load(str(output))
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "Unsqueeze", "DRSparseDepthwiseConv",
                                                     "Squeeze", "Conv"]
    op = next(n for n in model.graph.node if n.op_type == "DRSparseDepthwiseConv")
    attrs = {a.name: list(a.ints) for a in op.attribute if a.ints}
    assert attrs["kernel_shape"] == [1, 5] and attrs["pads"] == [0, 2, 0, 2] and attrs["strides"] == [1, 1]
    (row,) = _report(output)["dw_layers"]
    assert row["kernel"] == [5] and row["macs"] == 40 * 5 * 16
    listed = json.loads(run_cli("inspect", tmp_path / "in.onnx", "--json").output)
    assert [(layer["name"], layer["kernel"], layer["spatial_dims"]) for layer in listed["dw_layers"]] == \
        [("dw1d", [1, 5], 1)]


@pytest.mark.parametrize("opset", [11, 13])
def test_1d_rewrite_before_and_after_squeeze_axes_became_inputs(opset: int) -> None:
    model = conv1d_dw(channels=72, kernel=3, stride=2, dilation=2)
    model.opset_import[0].version = opset
    weight = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "w_dw")
    keep = np.random.default_rng(opset).random(weight.shape) < 0.5
    rewritten, (record,) = rewrite_to_plugin(model, {"dw1d": keep})
    assert record.rewritten and record.kept_taps == keep.sum()
    onnx.checker.check_model(rewritten, full_check=True)
    # the op sees [N, C, 1, L]: Unsqueeze/Squeeze of axis 2, an attribute before opset 13 and an input since
    axes = {"axes": [2]} if opset < 13 else {}
    assert [(n.op_type, n.name, list(n.input), list(n.output), {k: list(v) for k, v in node_attributes(n).items()
                                                               if k == "axes"})
            for n in rewritten.graph.node if n.op_type != "Conv" and n.op_type != "Relu"] == [
        ("Unsqueeze", "dw1d/unsqueeze", ["ea"] + (["dw1d/unsqueeze_axes"] if opset >= 13 else []), ["dw1d/input_2d"],
         axes),
        ("DRSparseDepthwiseConv", "dw1d", ["dw1d/input_2d"], ["dw1d/output_2d"], {}),
        ("Squeeze", "dw1d/squeeze", ["dw1d/output_2d"] + (["dw1d/squeeze_axes"] if opset >= 13 else []), ["da"],
         axes)]
    if opset >= 13:
        index = GraphIndex(rewritten.graph)
        assert index.constant("dw1d/unsqueeze_axes").tolist() == index.constant("dw1d/squeeze_axes").tolist() == [2]
    feeds = zoo_feeds(model)
    want = run_ort(masked_reference(model, {"dw1d": keep}), feeds)[0]
    assert max_rel_err(run_ort(lower(rewritten), feeds)[0], want) <= TOLERANCE


def test_calib_refuses_1d_dw_convs_by_name() -> None:
    with pytest.raises(DepruneError, match="1-D DW conv 'dw1d'"):
        prune_model(conv1d_dw(), PruneOptions(calib=CalibOptions(sources=["unused"])))
