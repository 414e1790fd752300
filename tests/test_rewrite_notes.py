"""What the plugin rewrite tells the user per DW layer (issue #12.9): why no activation was fused, and that
layers left at ratio 0 stay standard Convs instead of becoming the custom op."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from support.cli_testing import run_cli
from support.dsconv_graphs import BlockSpec, dsconv_network


def _dw_add_model() -> onnx.ModelProto:
    """input -> DW 3x3 (no activation) -> Add(input) -> Relu: the DW output feeds an Add, nothing to fuse."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((32, 1, 3, 3)).astype(np.float32), "dw.weight")
    nodes = [helper.make_node("Conv", ["input", "dw.weight"], ["dw_out"], name="dw", group=32, kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["dw_out", "input"], ["sum"], name="residual"),
             helper.make_node("Relu", ["sum"], ["output"], name="relu")]
    graph = helper.make_graph(nodes, "dw_add", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              [1, 32, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 32, 8, 8])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_prune_says_why_no_activation_was_fused_per_layer(tmp_path: Path) -> None:
    onnx.save(_dw_add_model(), tmp_path / "add.onnx")
    result = run_cli("prune", tmp_path / "add.onnx", tmp_path / "out.onnx", "--dw-ratio", "0.5")
    assert result.exit_code == 0, result.output
    assert "(0 with a fused activation)" in result.output
    assert "no activation fused into dw: output feeds Add 'residual': not an activation, nothing to fuse" \
        in result.output
    records = json.loads((tmp_path / "out.report.json").read_text())["rewrite"]
    assert [(r["layer"], r["activation"], r["no_fusion"]) for r in records] == [
        ("dw", "none", "output feeds Add 'residual': not an activation, nothing to fuse")]


def test_fused_and_unfused_layers_are_told_apart(tmp_path: Path) -> None:
    model = dsconv_network([BlockSpec(16, 16, expand=2, activation="relu"),
                            BlockSpec(16, 24, expand=2, activation="none")], size=8)
    onnx.save(model, tmp_path / "m.onnx")
    result = run_cli("prune", tmp_path / "m.onnx", tmp_path / "out.onnx", "--dw-ratio", "0.5")
    assert result.exit_code == 0, result.output
    records = {r["layer"]: r for r in json.loads((tmp_path / "out.report.json").read_text())["rewrite"]}
    fused = [name for name, r in records.items() if r["activation"] == "relu"]
    unfused = [name for name, r in records.items() if r["activation"] == "none"]
    assert len(fused) == 1 and records[fused[0]]["no_fusion"] is None and fused[0].startswith("blocks.0.dw")
    assert len(unfused) == 1 and unfused[0].startswith("blocks.1.dw")
    assert records[unfused[0]]["no_fusion"].startswith("output feeds Conv 'blocks.1.project")
    assert f"no activation fused into {unfused[0]}: output feeds Conv" in result.output
    assert f"no activation fused into {fused[0]}" not in result.output


def test_a_layer_at_ratio_zero_stays_a_standard_conv(tmp_path: Path) -> None:
    model = dsconv_network([BlockSpec(16, 16, expand=2), BlockSpec(16, 24, expand=2)], size=8)
    onnx.save(model, tmp_path / "m.onnx")
    dw_names = [n.name for n in model.graph.node if n.op_type == "Conv" and
                any(a.name == "group" and a.i > 1 for a in n.attribute)]
    result = run_cli("prune", tmp_path / "m.onnx", tmp_path / "out.onnx", "--dw-ratio", "0.5",
                     "--layer-ratio", f"{dw_names[0]}=0")
    assert result.exit_code == 0, result.output
    out = onnx.load(tmp_path / "out.onnx")
    ops = {n.name: n.op_type for n in out.graph.node}
    assert ops[dw_names[0]] == "Conv" and ops[dw_names[1]] == "DRSparseDepthwiseConv"
    records = json.loads((tmp_path / "out.report.json").read_text())["rewrite"]
    assert [(r["layer"], r["rewritten"]) for r in records] == [(dw_names[0], False), (dw_names[1], True)]
    assert f"not rewritten {dw_names[0]}: nothing pruned" in result.output
    # The dense layer keeps its weights exactly.
    source = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    weight = next(n for n in out.graph.node if n.name == dw_names[0]).input[1]
    assert np.array_equal(kept[weight], source[weight])
