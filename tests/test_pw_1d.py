"""1-D DSConv blocks (audio and sequence models: Conv1d PW -> DW -> PW): the 1x1 Conv1d layers are PW layers, their
filters are removed through the same dependency groups as 2-D ones, and the result is exact.

Before: a 1-D PW conv was no PW layer and the dependency graph refused every non-2-D conv, so
`--pw-ratio 0.5` on such a model pruned nothing ("channels 0 -> 0") without saying why.
"""
from __future__ import annotations

import numpy as np
import onnx

from deprune_onnx.analysis import analyze
from support.cli_testing import run_cli
from support.pw_graphs import GraphBuilder, assert_exact_pruning

WIDTH, HIDDEN, LENGTH = 16, 64, 40


def conv1d(g: GraphBuilder, x: str, c_in: int, c_out: int, kernel: int = 1, group: int = 1) -> str:
    w = g.const(g.rng.standard_normal((c_out, c_in // group, kernel)).astype(np.float32) * 0.5, "w")
    b = g.const(g.rng.standard_normal(c_out).astype(np.float32) * 0.1, "b")
    return g.node("Conv", [x, w, b], kernel_shape=[kernel], pads=[kernel // 2] * 2, group=group)


def dsconv_1d(blocks: int = 2) -> onnx.ModelProto:
    """[expand PW -> BN -> relu -> DW k5 -> relu -> project PW] + skip, repeated, then a PW head; input [1, 16, 40]."""
    g = GraphBuilder()
    x = "input"
    for _ in range(blocks):
        h = g.relu(g.bn(conv1d(g, x, WIDTH, HIDDEN), HIDDEN))
        h = g.relu(conv1d(g, h, HIDDEN, HIDDEN, kernel=5, group=HIDDEN))
        x = g.node("Add", [x, conv1d(g, h, HIDDEN, WIDTH)])
    return g.model("input", [1, WIDTH, LENGTH], [conv1d(g, x, WIDTH, 8)])


def test_1d_pointwise_convs_are_pw_layers_in_dsconv_blocks() -> None:
    analysis = analyze(dsconv_1d())
    assert len(analysis.pw_layers) == 5 and len(analysis.dw_layers) == 2
    assert all(layer.kernel == (1, 1) and layer.kind == "pw" for layer in analysis.pw_layers)
    assert all(layer.kernel == (1, 5) for layer in analysis.dw_layers)
    assert len(analysis.blocks) == 2
    for block, dw in zip(analysis.blocks, analysis.dw_layers):
        assert block.dw == dw.name and block.expand_pw and block.project_pw and block.residual_add


def test_pruning_planted_zero_channels_of_1d_blocks_is_exact() -> None:
    model = dsconv_1d()
    plan, pruned = assert_exact_pruning(model, ratio=0.5, align=8, scope="all")
    hidden = [g for g in plan.groups if g.readers and len(g.producers) == 1 and g.kept == HIDDEN // 2]
    assert len(hidden) == 2  # each block's expansion -> DW -> projection channels, halved
    shapes = sorted(tuple(t.dims) for t in pruned.graph.initializer if len(t.dims) == 3)
    # expansion [32, 16, 1] and DW [32, 1, 5] per block, projection [16, 32, 1], head [8, 16, 1] (the residual
    # stream starts at the graph input, so its 16 channels stay)
    assert shapes == sorted([(32, 16, 1), (32, 1, 5), (16, 32, 1)] * 2 + [(8, 16, 1)])


def test_prune_cli_removes_1d_pw_filters(tmp_path) -> None:
    source, out = tmp_path / "net1d.onnx", tmp_path / "pruned.onnx"
    onnx.save(dsconv_1d(), str(source))
    result = run_cli("prune", source, out, "--dw-ratio", "0.5", "--pw-ratio", "0.5", "--pw-scope", "all",
                     "--pw-align", "8", "--format", "dense")
    assert result.exit_code == 0, result.output
    assert "channels 128 -> 64" in result.output, result.output
    pruned = onnx.load(str(out))
    assert {tuple(t.dims) for t in pruned.graph.initializer if len(t.dims) == 3} == {
        (32, 16, 1), (32, 1, 5), (16, 32, 1), (8, 16, 1)}


def test_a_conv3d_reader_loses_the_same_input_channels() -> None:
    """Convs of any rank slice like 2-D ones (axis 0 filters, axis 1 input channels): a Conv3d reading an
    unsqueezed PW output is a reader of its channel group (before: the whole group was refused)."""
    g = GraphBuilder()
    x = g.relu(g.conv("input", 3, 16))
    volume = g.node("Unsqueeze", [x, g.const(np.array([4], np.int64), "axes")])
    w = g.const(g.rng.standard_normal((8, 16, 1, 1, 1)).astype(np.float32), "w3d")
    model = g.model("input", [1, 3, 8, 8], [g.node("Conv", [volume, w])])
    plan, pruned = assert_exact_pruning(model, ratio=0.5, align=8, scope="all")
    (entry,) = [group for group in plan.groups if group.kept == 8]
    assert {tuple(t.dims) for t in pruned.graph.initializer if len(t.dims) == 5} == {(8, 8, 1, 1, 1)}
    assert len(entry.removed) == 8
