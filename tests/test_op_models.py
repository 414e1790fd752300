"""Every real model: rewrite with random ~50% DW masks -> valid graph; lower(rewrite(m)) == dense masked model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.op_testing import (MODEL_PATHS, conv_weights_by_node, custom_nodes, dangling_nodes, dense_masked, dw_convs,
                        is_toposorted, max_rel_err, orphan_initializers, random_feeds, random_masks, run_ort)

from deprune_onnx.onnx_io.graph import node_attributes
from deprune_onnx.op.lower import lower
from deprune_onnx.op.oracle import run_dr_sparse_dwconv
from deprune_onnx.op.rewrite import rewrite_to_plugin

pytestmark = pytest.mark.model

assert len(MODEL_PATHS) == 3, "the three sample models are missing from samples/"

# Activations each model's DW convs are followed by (see samples/README.md).
EXPECTED_ACTIVATIONS = {
    "mobilenet_v2_torchvision": {"clip"},                       # Relu6 as Clip(0, 6)
    "ppocr_mobile_v2_cls_mobilenetv3_small": {"relu", "hard_swish"},  # hard-swish decomposed by Paddle
    "pplcnet_x1_0_doc_orientation_rapid": {"hard_swish"},
}


def _without_negative_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose -1 dims (invalid ONNX that Paddle2ONNX writes, as in the ppocr model) become symbolic."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in [*model.graph.value_info, *model.graph.output, *model.graph.input]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.dim_param = "unknown"
    return model


def _full_check(original: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """Full check of ``model``; invalid -1 dims inherited from the original are made symbolic first."""
    onnx.checker.check_model(_without_negative_dims(original), full_check=True)
    onnx.checker.check_model(_without_negative_dims(model), full_check=True)


@pytest.fixture(scope="module", params=MODEL_PATHS, ids=lambda p: p.stem)
def case(request):
    model = onnx.load(str(request.param))
    masks = random_masks(model, keep=0.5, seed=1)
    # Kept weights that are exactly zero must survive as kept taps (keep_masks, not the non-zero pattern).
    zero_kept = {name: mask & (np.random.default_rng(2).random(mask.shape) < 0.05) for name, mask in masks.items()}
    dense = dense_masked(model, masks, zero_kept)
    rewritten, records = rewrite_to_plugin(dense, masks)
    return request.param.stem, model, masks, zero_kept, dense, rewritten, records


def test_rewrite_is_a_valid_graph(case):
    stem, model, masks, zero_kept, _, rewritten, records = case
    _full_check(model, rewritten)
    assert is_toposorted(rewritten) and not orphan_initializers(rewritten) and not dangling_nodes(rewritten)
    assert all(r.rewritten for r in records) and len(records) == len(dw_convs(model))
    assert sorted(n.name for n in custom_nodes(rewritten)) == sorted(masks)
    assert {r.activation for r in records} == EXPECTED_ACTIVATIONS[stem]
    fused = sum(len(r.fused_nodes) for r in records)
    assert len(rewritten.graph.node) == len(model.graph.node) - fused
    for record in records:
        assert record.kept_taps == masks[record.layer].sum()  # exact-zero kept weights counted
    assert sum(m.sum() for m in zero_kept.values()) > 0  # the case really has exact-zero kept weights


def test_lower_rewrite_equals_dense_masked(case):
    _, model, masks, _, dense, rewritten, _ = case
    lowered = lower(rewritten)
    _full_check(model, lowered)
    assert not custom_nodes(lowered)
    lowered_weights, dense_weights = conv_weights_by_node(lowered), conv_weights_by_node(dense)
    assert set(lowered_weights) == set(dense_weights)
    for name, weight in dense_weights.items():
        assert lowered_weights[name].dtype == weight.dtype and np.array_equal(lowered_weights[name], weight), name
    for batch_seed in range(2):
        feeds = random_feeds(model, seed=batch_seed)
        for got, expected in zip(run_ort(lowered, feeds), run_ort(dense, feeds)):
            assert max_rel_err(got, expected) <= 1e-5


def test_oracle_on_a_real_layer(case):
    """The numpy oracle on each model's first rewritten node equals ORT's Conv(+act) of the lowered node."""
    _, model, _, _, _, rewritten, records = case
    node = custom_nodes(rewritten)[0]
    attrs = node_attributes(node)
    x = np.random.default_rng(0).standard_normal((2, attrs["channels"], 20, 24)).astype(np.float32)
    inputs = [onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, list(x.shape))]
    outputs = [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)]
    single = onnx.helper.make_model(onnx.helper.make_graph([node], "one", inputs, outputs),
                                    opset_imports=list(rewritten.opset_import))
    single.ir_version = rewritten.ir_version
    expected = run_ort(lower(single), {node.input[0]: x})[0]
    assert max_rel_err(run_dr_sparse_dwconv(x, attrs), expected) <= 1e-5
