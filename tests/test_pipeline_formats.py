"""The whole pipeline on the real models: plugin output == dense output for every method, with PW removal
and in float16 too. lower(rewrite(m)) must have bit-identical weights to the dense masked model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from support.samples import SAMPLE_MODELS, sample_model
from deprune_onnx.cli.main import main
from deprune_onnx.op.lower import lower
from support.op_testing import conv_weights_by_node, custom_nodes, max_rel_err, random_feeds, run_ort

pytestmark = pytest.mark.model

# Small projections (MobileNetV3-Small x0.35 has 8-48 channels) need a finer PW alignment than 32.
PW_ALIGN = {"mobilenet_v2": "32", "mobilenet_v3_small": "8", "pplcnet": "32"}


def prune(source: Path, out: Path, *args: str) -> onnx.ModelProto:
    result = CliRunner().invoke(main, ["prune", str(source), str(out), "-q", *args])
    assert result.exit_code == 0, result.output
    return onnx.load(str(out))


@pytest.mark.parametrize("key", sorted(SAMPLE_MODELS))
@pytest.mark.parametrize("method", ["dcp", "b", "bh"])
def test_plugin_output_lowers_to_the_dense_masked_model(tmp_path: Path, key: str, method: str) -> None:
    source = sample_model(key)
    args = ["--method", method, "--dw-ratio", "0.6"]
    plugin = prune(source, tmp_path / "plugin.onnx", *args)
    dense = prune(source, tmp_path / "dense.onnx", *args, "--format", "dense")
    n_dw = len([n for n in dense.graph.node if n.op_type == "Conv"]) - \
        len([n for n in plugin.graph.node if n.op_type == "Conv"])
    assert len(custom_nodes(plugin)) == n_dw > 0
    onnx.checker.check_model(plugin)
    lowered = lower(plugin)
    dense_weights, lowered_weights = conv_weights_by_node(dense), conv_weights_by_node(lowered)
    for node in custom_nodes(plugin):
        assert dense_weights[node.name].tobytes() == lowered_weights[node.name].tobytes(), node.name
    feeds = random_feeds(dense, seed=3)
    for got, want in zip(run_ort(lowered, feeds), run_ort(dense, feeds)):
        assert max_rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("key", sorted(SAMPLE_MODELS))
def test_pw_removal_with_dw_masks_in_both_formats(tmp_path: Path, key: str) -> None:
    source = sample_model(key)
    args = ["--dw-ratio", "0.5", "--pw-ratio", "0.5", "--pw-align", PW_ALIGN[key]]
    dense = prune(source, tmp_path / "dense.onnx", *args, "--format", "dense")
    plugin = prune(source, tmp_path / "plugin.onnx", *args)
    original = onnx.load(str(source))
    assert sum(t.ByteSize() for t in dense.graph.initializer) < sum(t.ByteSize() for t in original.graph.initializer)
    feeds = random_feeds(original, seed=4)
    for got, want in zip(run_ort(lower(plugin), feeds), run_ort(dense, feeds)):
        assert got.shape == want.shape and max_rel_err(got, want) <= 1e-5
    again = prune(source, tmp_path / "again.onnx", "--plan", str(tmp_path / "plugin.plan.json"))
    assert again.SerializeToString() == plugin.SerializeToString()


def test_float16_output_stays_within_fp16_tolerance(tmp_path: Path) -> None:
    source = sample_model("mobilenet_v2")
    dense = prune(source, tmp_path / "dense.onnx", "--format", "dense", "--dw-ratio", "0.3")
    half = prune(source, tmp_path / "half.onnx", "--dtype", "float16", "--dw-ratio", "0.3")
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    tap_values = next(a for a in custom_nodes(half)[0].attribute if a.name == "tap_values")
    assert tap_values.t.data_type == onnx.TensorProto.FLOAT16
    feeds = random_feeds(dense, seed=5)
    want = run_ort(dense, feeds)[0]
    got = run_ort(lower(half), {k: v.astype(np.float16) for k, v in feeds.items()})[0]
    assert max_rel_err(got.astype(np.float32), want) <= 1e-2
