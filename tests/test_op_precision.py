"""convert_to_float16: the rewritten model's tensors, I/O and packed taps become float16 and still run right."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.op_testing import MODEL_PATHS, custom_nodes, max_rel_err, random_feeds, random_masks, run_ort

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.graph import node_attributes
from deprune_onnx.op.attributes import decode_attributes
from deprune_onnx.op.lower import lower
from deprune_onnx.op.oracle import run_dr_sparse_dwconv
from deprune_onnx.op.rewrite import rewrite_to_plugin

from deprune_onnx.onnx_io.float16 import convert_to_float16

pytestmark = pytest.mark.model

FP16_TOLERANCE = 1e-2  # the spec's float16 max relative error vs float32


@pytest.fixture(scope="module", params=[p for p in MODEL_PATHS if "pplcnet" in p.stem or "mobilenet_v2" in p.stem],
                ids=lambda p: p.stem)
def models(request):
    model = onnx.load(str(request.param))
    rewritten, _ = rewrite_to_plugin(model, random_masks(model, keep=0.7, seed=3))
    return rewritten, convert_to_float16(rewritten)[0]


def test_packed_taps_and_io_follow_float16(models):
    rewritten, half = models
    onnx.checker.check_model(half)
    assert {v.type.tensor_type.elem_type for v in [*half.graph.input, *half.graph.output]} == {onnx.TensorProto.FLOAT16}
    assert {t.data_type for t in half.graph.initializer} <= {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64}
    for node32, node16 in zip(custom_nodes(rewritten), custom_nodes(half)):
        params32, packed32 = decode_attributes(node_attributes(node32))
        params16, packed16 = decode_attributes(node_attributes(node16))  # still a valid pack
        assert params16 == params32
        assert packed16.tap_values.dtype == packed16.bias.dtype == np.float16
        assert np.array_equal(packed16.tap_indices, packed32.tap_indices)
        assert np.array_equal(packed16.tap_values, packed32.tap_values.astype(np.float16))
    assert "Cast" not in {n.op_type for n in half.graph.node}  # nothing had to stay float32


def test_float16_runs_in_ort_within_tolerance(models):
    rewritten, half = models
    feeds = random_feeds(rewritten, seed=5)
    expected = run_ort(lower(rewritten), feeds)[0]
    got = run_ort(lower(half), {k: v.astype(np.float16) for k, v in feeds.items()})[0]
    assert got.dtype == np.float16
    assert max_rel_err(got, expected) <= FP16_TOLERANCE
    node = custom_nodes(half)[0]
    x = np.random.default_rng(1).standard_normal((1, node_attributes(node)["channels"], 16, 16)).astype(np.float32)
    node32 = custom_nodes(rewritten)[0]
    assert max_rel_err(run_dr_sparse_dwconv(x.astype(np.float16), node_attributes(node)),
                       run_dr_sparse_dwconv(x, node_attributes(node32))) <= FP16_TOLERANCE


def test_refuses_a_model_that_is_already_float16(models):
    with pytest.raises(DepruneError, match="already float16"):
        convert_to_float16(models[1])
