"""Conv weights and biases read through Identity (PyTorch's exporter deduplicates equal initializers that way,
e.g. the all-zero biases of a freshly initialised network): prune treats them as the initializers they are, so
the plugin rewrite takes the layer, and the output equals the dense masked model in ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from support.cli_testing import run_cli
from support.op_testing import run_ort

C = 32


def _shared_bias_model(path: Path) -> Path:
    rng = np.random.RandomState(0)
    initializers = [numpy_helper.from_array(rng.randn(C, 1, 3, 3).astype(np.float32), "w0"),
                    numpy_helper.from_array(rng.randn(C, 1, 3, 3).astype(np.float32), "w1"),
                    numpy_helper.from_array(np.full(C, 0.25, np.float32), "bias")]
    nodes = [helper.make_node("Identity", ["bias"], ["bias_copy"], name="dedup"),
             helper.make_node("Conv", ["x", "w0", "bias"], ["h"], name="dw0", group=C, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1", "bias_copy"], ["y"], name="dw1", group=C, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "shared_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                    [1, C, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 8, 8])], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_bias_behind_identity_is_rewritten_and_exact(tmp_path: Path) -> None:
    source = _shared_bias_model(tmp_path / "in.onnx")
    plugin, dense = tmp_path / "plugin.onnx", tmp_path / "dense.onnx"
    assert run_cli("prune", source, plugin, "--method", "b", "--dw-ratio", "0.5", "-q").exit_code == 0
    assert run_cli("prune", source, dense, "--method", "b", "--dw-ratio", "0.5", "--format", "dense",
                   "-q").exit_code == 0
    assert [n.op_type for n in onnx.load(plugin).graph.node] == ["DRSparseDepthwiseConv"] * 2
    lowered = tmp_path / "lowered.onnx"
    assert run_cli("lower", plugin, lowered).exit_code == 0
    x = {"x": np.random.RandomState(1).randn(1, C, 8, 8).astype(np.float32)}
    expected = run_ort(str(dense), x)[0]
    np.testing.assert_allclose(run_ort(str(lowered), x)[0], expected, rtol=1e-5, atol=1e-5)
    # The dense output is the input's weights times the plan's masks, with the bias untouched.
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(dense).graph.initializer}
    conv = [n for n in onnx.load(dense).graph.node if n.op_type == "Conv"]
    np.testing.assert_array_equal(weights[conv[1].input[2]], np.full(C, 0.25, np.float32))
