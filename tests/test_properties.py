"""Property tests over generated DSConv networks (hypothesis): any shape, any ratio, any method.

For every generated network and options the dense pruned model must be a valid ONNX model, survive the
streaming writer unchanged, run in ONNX Runtime exactly like the original with the plan's masks applied by
hand, touch nothing but the DW weights, and obey the method's structural rule (DCP: layer count; BWT: equal
count per sub-GEMM; HSR: every sub-GEMM's K a multiple of the tile or all of V_g). Settings are fixed and
derandomized so CI sees the same examples on every run. The graph patterns of issue #13
(tests/support/graph_zoo.py) go through the same checks at any ratio and method.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from support.dsconv_graphs import ACTIVATIONS, BlockSpec, dsconv_network
from support.graph_zoo import OK, ZOO, ZooCase, masked_reference, zoo_feeds
from deprune_onnx.onnx_io.load_save import drop_initializer_inputs, load_model
from deprune_onnx.dw.planner import DWOptions
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.dw.masks import SUBGEMM_CHANNELS, round_half_up, subgemm_vectors
from deprune_onnx.op.lower import lower
from deprune_onnx.op.rewrite import rewrite_to_plugin
from deprune_onnx.pipeline import PruneOptions, prune_model
from deprune_onnx.onnx_io.proto_stream import write_model
from support.op_testing import run_ort

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SIZE = 14


@st.composite
def block_specs(draw: st.DrawFn) -> list[BlockSpec]:
    count = draw(st.integers(1, 3))
    channels = draw(st.integers(2, 24))
    blocks, size = [], SIZE
    for _ in range(count):
        kernel = draw(st.sampled_from([3, 5, 7]))
        stride = draw(st.sampled_from([1, 2]))
        if draw(st.booleans()):
            pads = None
        else:
            pads = tuple(draw(st.integers(0, kernel - 1)) for _ in range(4))
        spec = BlockSpec(channels=channels, out_channels=draw(st.sampled_from([channels, draw(st.integers(2, 24))])),
                         expand=draw(st.sampled_from([1, 2, 3, 6])), kernel=kernel, stride=stride,
                         multiplier=draw(st.sampled_from([1, 1, 2])), pads=pads,
                         activation=draw(st.sampled_from(ACTIVATIONS)), se=draw(st.booleans()),
                         residual=draw(st.booleans()))
        top, left, bottom, right = spec.resolved_pads()
        size_h = (size + top + bottom - kernel) // stride + 1
        size_w = (size + left + right - kernel) // stride + 1
        assume(size_h >= 1 and size_w >= 1)
        size = min(size_h, size_w)
        blocks.append(spec)
        channels = spec.out_channels
    return blocks


options_strategy = st.builds(
    DWOptions, method=st.sampled_from(["dcp", "b", "bh"]),
    dw_ratio=st.one_of(st.just(0.0), st.floats(0.0, 0.95, allow_nan=False)),
    tile=st.sampled_from([4, 8, 16, 32]))


def _check_structure(method: str, ratio: float, tile: int, keep: np.ndarray) -> None:
    vectors = subgemm_vectors(keep.shape, SUBGEMM_CHANNELS)
    flat = np.zeros(len(vectors) * SUBGEMM_CHANNELS * keep[0].size, dtype=bool)
    flat[: keep.size] = keep.reshape(-1)
    per_channel = keep.reshape(keep.shape[0], -1).sum(axis=1)
    kept = np.add.reduceat(per_channel, np.arange(0, keep.shape[0], SUBGEMM_CHANNELS))
    if method == "dcp":
        assert int(keep.size - keep.sum()) == round_half_up(ratio * keep.size)
    elif method == "b":
        assert kept.tolist() == [int(v - round_half_up(ratio * v)) for v in vectors]
    else:
        assert all(k % tile == 0 or k == v for k, v in zip(kept.tolist(), vectors.tolist())), (kept, vectors)


@PROPERTY_SETTINGS
@given(blocks=block_specs(), options=options_strategy, seed=st.integers(0, 3))
def test_pruned_dense_model_is_valid_exact_and_structured(blocks: list[BlockSpec], options: DWOptions,
                                                          seed: int) -> None:
    original = dsconv_network(blocks, size=SIZE, seed=seed)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    result = prune_model(model, PruneOptions(dw=options, output_format="dense"))

    buffer = io.BytesIO()
    write_model(result.model, buffer)
    written = onnx.load_from_string(buffer.getvalue())
    assert written.SerializeToString(deterministic=True) == result.model.SerializeToString(deterministic=True)
    onnx.checker.check_model(written, full_check=True)

    # The reference: the original model with every planned mask applied by hand.
    reference = onnx.ModelProto()
    reference.CopyFrom(original)
    index = GraphIndex(reference.graph)
    nodes = {n.name: n for n in reference.graph.node}
    planned = {layer.name: layer for layer in result.plan.dw_layers}
    assert set(planned) == {n.name for n in reference.graph.node if n.name.startswith("blocks.") and
                            ".dw/" in n.name}
    for layer in result.plan.dw_layers:
        weight_name = nodes[layer.name].input[1]
        keep = layer.keep_mask()
        tensor = next(t for t in reference.graph.initializer if t.name == weight_name)
        tensor.CopyFrom(numpy_helper.from_array(np.where(keep, index.constant(weight_name), 0).astype(np.float32),
                                                weight_name))
        if options.dw_ratio > 0:
            _check_structure(options.method, options.dw_ratio, options.tile, keep)
        else:
            assert keep.all()
    assert written.SerializeToString(deterministic=True) == reference.SerializeToString(deterministic=True)

    feeds = {"input": np.random.default_rng(seed).standard_normal((1, blocks[0].channels, SIZE, SIZE))
             .astype(np.float32)}
    np.testing.assert_array_equal(run_ort(written, feeds)[0], run_ort(reference, feeds)[0])


@PROPERTY_SETTINGS
@given(blocks=block_specs(), options=options_strategy, seed=st.integers(0, 3))
def test_lowered_rewrite_equals_the_dense_model(blocks: list[BlockSpec], options: DWOptions, seed: int) -> None:
    """lower(rewrite_to_plugin(dense, masks)) computes what the dense masked model computes (docs/op.md)."""
    result = prune_model(dsconv_network(blocks, size=SIZE, seed=seed), PruneOptions(dw=options, output_format="dense"))
    dense = result.model
    masks = {layer.name: layer.keep_mask() for layer in result.plan.dw_layers}
    rewritten, _ = rewrite_to_plugin(dense, masks)
    lowered = lower(rewritten)
    onnx.checker.check_model(lowered)
    feeds = {"input": np.random.default_rng(seed).standard_normal((1, blocks[0].channels, SIZE, SIZE))
             .astype(np.float32)}
    want, got = run_ort(dense, feeds)[0], run_ort(lowered, feeds)[0]
    scale = max(float(np.abs(want).max()), 1e-6)
    assert float(np.abs(got - want).max()) / scale <= 1e-5


ZOO_ACCEPTED = [case for case in ZOO if case.expect == OK]


@PROPERTY_SETTINGS
@given(case=st.sampled_from(ZOO_ACCEPTED), options=options_strategy, seed=st.integers(0, 3))
def test_graph_zoo_models_prune_exactly(case: ZooCase, options: DWOptions, seed: int) -> None:
    """Every graph pattern of issue #13 the tool accepts (If/Loop/function reads of a DW weight, IR 3, folded and
    QDQ weights, SAME pads, ...), at any ratio and method: the dense output equals the input with the plan's masks
    applied by an inserted Mul (ONNX Runtime, 1e-5), and lower(rewrite(dense)) equals the dense output."""
    original = case.build()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.onnx"
        path.write_bytes(original.SerializeToString())
        model = load_model(path)
    if "--drop-initializer-inputs" in case.args:
        drop_initializer_inputs(model)
    result = prune_model(model, PruneOptions(dw=options, output_format="dense"))
    masks = {layer.name: layer.keep_mask() for layer in result.plan.dw_layers}
    rewritten, _ = rewrite_to_plugin(result.model, masks)
    lowered = lower(rewritten)
    reference = masked_reference(original, masks)
    for cond in (True, False):
        feeds = zoo_feeds(original, seed, cond)
        want = run_ort(reference, feeds)[0]
        got = run_ort(result.model, feeds)[0]
        scale = max(float(np.abs(want).max()), 1e-6)
        assert float(np.abs(got - want).max()) / scale <= 1e-5
        assert float(np.abs(run_ort(lowered, feeds)[0] - got).max()) / scale <= 1e-5
