"""rewrite_to_plugin and lower on small generated graphs: fusion, refusals, graph hygiene, exactness."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from support.op_testing import (conv_weights_by_node, custom_nodes, dangling_nodes, dw_model, is_toposorted, max_rel_err,
                        orphan_initializers, random_feeds, random_masks, run_ort)

from deprune_onnx.errors import DepruneError
from deprune_onnx.op.activations import HARD_SWISH_PARAMS
from deprune_onnx.onnx_io.graph import node_attributes
from deprune_onnx.op.lower import lower
from deprune_onnx.op.oracle import run_dr_sparse_dwconv
from deprune_onnx.op.rewrite import rewrite_to_plugin

RNG = np.random.default_rng(7)
WEIGHT = (RNG.standard_normal((40, 1, 3, 3)) * (RNG.random((40, 1, 3, 3)) < 0.5)).astype(np.float32)
BIAS = RNG.standard_normal(40).astype(np.float32)
X = {"X": RNG.standard_normal((2, 40, 9, 11)).astype(np.float32) * 3}

FUSED = {
    "relu": ("relu", ()),
    "relu6": ("clip", (0.0, 6.0)),
    "clip_min_only": ("clip", (-1.5, np.inf)),
    "clip_constant_nodes": ("clip", (-1.0, 2.0)),
    "hard_swish": ("hard_swish", HARD_SWISH_PARAMS),
    "hard_sigmoid_mul": ("hard_swish", (float(np.float32(0.2)), 0.5)),
    "silu": ("silu", ()),
    "decomposed_hard_swish": ("hard_swish", HARD_SWISH_PARAMS),
}


def _check_valid(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert is_toposorted(model)
    assert not orphan_initializers(model)
    assert not dangling_nodes(model)


@pytest.mark.parametrize("pattern", sorted(FUSED))
def test_activation_is_fused_and_everything_agrees(pattern):
    model = dw_model(WEIGHT, BIAS, activation=pattern)
    rewritten, records = rewrite_to_plugin(model)
    _check_valid(rewritten)
    assert [n.op_type for n in rewritten.graph.node] == ["DRSparseDepthwiseConv"]
    assert {(o.domain, o.version) for o in rewritten.opset_import} >= {("deprune", 1)}
    (record,) = records
    assert record.rewritten and record.bias_fused and record.layer == "dw"
    assert (record.activation, record.activation_params) == FUSED[pattern]
    assert record.kept_taps == np.count_nonzero(WEIGHT) and record.total_taps == WEIGHT.size
    expected = run_ort(model, X)[0]
    # (a) the numpy oracle reads the node's packed attributes; (b) lower() runs in ONNX Runtime.
    oracle = run_dr_sparse_dwconv(X["X"], node_attributes(rewritten.graph.node[0]))
    assert max_rel_err(oracle, expected) <= 1e-5
    lowered = lower(rewritten)
    _check_valid(lowered)
    assert not custom_nodes(lowered) and "deprune" not in {o.domain for o in lowered.opset_import}
    assert np.array_equal(conv_weights_by_node(lowered)["dw"], WEIGHT)
    assert max_rel_err(run_ort(lowered, X)[0], expected) <= 1e-5


def test_hard_swish_lowers_to_hard_sigmoid_below_opset_14():
    lowered = lower(rewrite_to_plugin(dw_model(WEIGHT, BIAS, activation="hard_swish", opset=13))[0])
    assert [n.op_type for n in lowered.graph.node] == ["Conv", "HardSigmoid", "Mul"]
    assert max_rel_err(run_ort(lowered, X)[0], run_ort(dw_model(WEIGHT, BIAS, activation="hard_swish"), X)[0]) \
        <= 1e-5


def test_activation_not_fused_when_conv_output_has_another_consumer():
    model = dw_model(WEIGHT, BIAS, activation="relu")
    model.graph.output.append(helper.make_tensor_value_info("conv_out", onnx.TensorProto.FLOAT, ["N", 40, 9, 11]))
    rewritten, (record,) = rewrite_to_plugin(model)
    _check_valid(rewritten)
    assert record.rewritten and record.activation == "none"
    assert [n.op_type for n in rewritten.graph.node] == ["DRSparseDepthwiseConv", "Relu"]
    expected = run_ort(model, X)
    for got, ref in zip(run_ort(lower(rewritten), X), expected):
        assert np.array_equal(got, ref)


def test_unfusable_gate_stays_standard():
    """Mul(x, HardSigmoid(y)) with y != x is not a hard-swish of the conv output."""
    model = dw_model(WEIGHT, None, activation="hard_sigmoid_mul")
    model.graph.node[1].input[0] = "X"  # gate reads the conv input, not its output
    rewritten, (record,) = rewrite_to_plugin(model)
    assert record.activation == "none" and not record.bias_fused
    assert sorted(n.op_type for n in rewritten.graph.node) == ["DRSparseDepthwiseConv", "HardSigmoid", "Mul"]
    assert max_rel_err(run_ort(lower(rewritten), X)[0], run_ort(model, X)[0]) <= 1e-5


def test_depth_multiplier_and_asymmetric_pads():
    weight = (RNG.standard_normal((80, 1, 5, 5)) * (RNG.random((80, 1, 5, 5)) < 0.4)).astype(np.float32)
    model = dw_model(weight, None, channels=40, pads=(0, 2, 1, 2), strides=(2, 1), dilations=(1, 2))
    rewritten, (record,) = rewrite_to_plugin(model, k_tile=16, subgemm_channels=16)
    _check_valid(rewritten)
    attrs = node_attributes(rewritten.graph.node[0])
    assert attrs["depth_multiplier"] == 2 and attrs["k_tile"] == 16 and record.subgemms == 5
    expected = run_ort(model, X)[0]
    assert max_rel_err(run_dr_sparse_dwconv(X["X"], attrs), expected) <= 1e-5
    assert np.array_equal(run_ort(lower(rewritten), X)[0], expected)


def test_keep_masks_keep_exact_zero_weights_and_select_layers():
    mask = WEIGHT != 0
    weight = WEIGHT.copy()
    weight.reshape(-1)[np.flatnonzero(mask)[:7]] = 0.0  # kept by the plan, but exactly zero
    model = dw_model(weight, BIAS, activation="relu6")
    rewritten, (record,) = rewrite_to_plugin(model, {"dw": mask})
    assert record.kept_taps == mask.sum()
    lowered = lower(rewritten)
    assert np.array_equal(conv_weights_by_node(lowered)["dw"], weight)
    assert np.array_equal(run_ort(lowered, X)[0], run_ort(model, X)[0])
    with pytest.raises(DepruneError, match="not in the model"):
        rewrite_to_plugin(model, {"missing": mask})
    with pytest.raises(DepruneError, match="shape"):
        rewrite_to_plugin(model, {"dw": mask[:1]})


def _same_upper_stride2_dynamic_size(model: onnx.ModelProto) -> None:
    conv = model.graph.node[0]
    kept = [a for a in conv.attribute if a.name != "strides"]
    del conv.attribute[:]
    conv.attribute.extend(kept + [helper.make_attribute("auto_pad", "SAME_UPPER"),
                                  helper.make_attribute("strides", [2, 2])])
    for axis, name in ((2, "H"), (3, "W")):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name


@pytest.mark.parametrize("auto_pad,strides,hw", [("SAME_UPPER", 1, (9, 11)), ("SAME_LOWER", 1, (9, 11)),
                                                 ("SAME_UPPER", 2, (9, 11)), ("SAME_LOWER", 2, (10, 12))])
def test_same_auto_pad_becomes_explicit_pads(auto_pad: str, strides: int, hw: tuple[int, int]) -> None:
    """SAME_* is resolved to the pads ONNX defines (stride 1: any size; stride 2: the static input size), so the
    op and its lowering compute exactly what the SAME-padded Conv computes."""
    model = dw_model(WEIGHT, BIAS, activation="relu", strides=(strides, strides), hw=hw,
                     extra_conv_attrs={"auto_pad": auto_pad})
    rewritten, (record,) = rewrite_to_plugin(model, {"dw": WEIGHT != 0})
    assert record.rewritten, record.reason
    x = {"X": np.random.default_rng(3).standard_normal((2, 40, *hw)).astype(np.float32)}
    assert max_rel_err(run_ort(lower(rewritten), x)[0], run_ort(model, x)[0]) <= 1e-6


@pytest.mark.parametrize("mutate,reason", [
    (_same_upper_stride2_dynamic_size, "auto_pad=SAME_UPPER with stride 2x2 and unknown input spatial size"),
    (lambda m: m.graph.initializer.pop(0) or m.graph.input.append(
        helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [40, 1, 3, 3])), "not an initializer"),
])
def test_refused_layers_stay_standard_with_a_reason(mutate, reason):
    model = dw_model(WEIGHT, None, activation="relu", extra_conv_attrs={})
    mutate(model)
    rewritten, records = rewrite_to_plugin(model, {"dw": WEIGHT != 0})
    assert not records[0].rewritten and reason in records[0].reason
    assert not custom_nodes(rewritten) and [n.op_type for n in rewritten.graph.node] == ["Conv", "Relu"]


def test_input_model_untouched_and_metadata_kept():
    model = dw_model(WEIGHT, BIAS, activation="silu")
    helper.set_model_props(model, {"labels": "0,90,180,270"})
    model.doc_string = "sample"
    before = model.SerializeToString()
    rewritten, _ = rewrite_to_plugin(model)
    lowered = lower(rewritten)
    assert model.SerializeToString() == before
    for out in (rewritten, lowered):
        assert {p.key: p.value for p in out.metadata_props} == {"labels": "0,90,180,270"}
        assert out.doc_string == "sample" and out.ir_version == model.ir_version


def test_float16_model_rewrites_with_float16_taps():
    model = dw_model(WEIGHT.astype(np.float16), BIAS.astype(np.float16), activation="relu")
    rewritten, _ = rewrite_to_plugin(model)
    attrs = node_attributes(rewritten.graph.node[0])
    assert attrs["tap_values"].dtype == np.float16
    x16 = {"X": X["X"].astype(np.float16)}
    assert np.array_equal(run_ort(lower(rewritten), x16)[0], run_ort(model, x16)[0])


@pytest.mark.model
def test_in_place_rewrite_equals_the_copying_rewrite_without_copying_big_weights(monkeypatch) -> None:
    """in_place=True (what prune uses) gives the same model as the default, and the big initializers it keeps
    are never rebuilt: their bytes stay in the original message."""
    from support.samples import SAMPLE_MODEL
    from deprune_onnx.op import graphs

    monkeypatch.setattr(graphs, "STUB_BYTES", 64 * 1024)  # stub MobileNetV2's larger PW weights too
    model = onnx.load(str(SAMPLE_MODEL))
    masks = random_masks(model, keep=0.5, seed=7)
    copied, copied_records = rewrite_to_plugin(model, masks)
    target = onnx.load(str(SAMPLE_MODEL))
    big = {t.name: t.raw_data for t in target.graph.initializer if len(t.raw_data) >= 64 * 1024}
    assert big
    in_place, records = rewrite_to_plugin(target, masks, in_place=True)
    assert in_place is target and records == copied_records
    assert [(n.name, n.op_type) for n in in_place.graph.node] == [(n.name, n.op_type) for n in copied.graph.node]
    assert {t.name: t.SerializeToString() for t in in_place.graph.initializer} == \
        {t.name: t.SerializeToString() for t in copied.graph.initializer}
    assert all(t.raw_data == big[t.name] for t in in_place.graph.initializer if t.name in big)
    onnx.checker.check_model(in_place, full_check=True)
    feeds = random_feeds(model, seed=2)
    np.testing.assert_array_equal(run_ort(lower(in_place), feeds)[0], run_ort(lower(copied), feeds)[0])


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("kernel,pads,strides,dilations", [
    ((3, 5), (1, 2, 1, 2), (1, 2), (1, 1)),
    ((5, 1), (2, 0, 3, 0), (2, 1), (2, 1)),
])
def test_non_square_kernels_with_and_without_bias(kernel, pads, strides, dilations, with_bias):
    rng = np.random.default_rng(kernel[0] * 10 + kernel[1])
    weight = (rng.standard_normal((40, 1, *kernel)) * (rng.random((40, 1, *kernel)) < 0.5)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32) if with_bias else None
    model = dw_model(weight, bias, activation="relu", pads=pads, strides=strides, dilations=dilations)
    rewritten, (record,) = rewrite_to_plugin(model)
    _check_valid(rewritten)
    assert record.rewritten and record.bias_fused == with_bias
    attrs = node_attributes(rewritten.graph.node[0])
    assert list(attrs["kernel_shape"]) == list(kernel)
    expected = run_ort(model, X)[0]
    assert max_rel_err(run_dr_sparse_dwconv(X["X"], attrs), expected) <= 1e-5
    lowered = lower(rewritten)
    assert np.array_equal(conv_weights_by_node(lowered)["dw"], weight)
    assert max_rel_err(run_ort(lowered, X)[0], expected) <= 1e-5


def test_in_place_rewrite_of_a_small_model_keeps_every_dw_weight_and_bias(monkeypatch) -> None:
    """The fast-tier twin of the MobileNetV2 test above: with every initializer above 1 KiB stubbed during the
    surgery, the DW weight and bias (grouped-conv inputs) must still reach the packer with their values."""
    from deprune_onnx.op import graphs

    monkeypatch.setattr(graphs, "STUB_BYTES", 1024)
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((512, 1, 3, 3)) * (rng.random((512, 1, 3, 3)) < 0.5)).astype(np.float32)
    bias = rng.standard_normal(512).astype(np.float32)  # 2 KiB: stubbed unless kept
    model = dw_model(weight, bias, activation="relu", hw=(5, 5))
    copied, copied_records = rewrite_to_plugin(model)
    target = onnx.ModelProto()
    target.CopyFrom(model)
    in_place, records = rewrite_to_plugin(target, in_place=True)
    assert in_place is target and records == copied_records
    assert {t.name: t.SerializeToString() for t in in_place.graph.initializer} == \
        {t.name: t.SerializeToString() for t in copied.graph.initializer}
    feeds = {"X": rng.standard_normal((1, 512, 5, 5)).astype(np.float32)}
    expected = run_ort(model, feeds)[0]
    assert max_rel_err(run_dr_sparse_dwconv(feeds["X"], node_attributes(in_place.graph.node[0])), expected) <= 1e-5


def test_a_conv_without_strides_dilations_or_pads_attributes_uses_the_onnx_defaults() -> None:
    model = dw_model(WEIGHT, BIAS, hw=(9, 11))
    conv = model.graph.node[0]
    kept = [a for a in conv.attribute if a.name not in ("strides", "dilations", "pads")]
    del conv.attribute[:]
    conv.attribute.extend(kept)
    rewritten, (record,) = rewrite_to_plugin(model)
    attrs = node_attributes(rewritten.graph.node[0])
    assert record.rewritten
    assert (list(attrs["strides"]), list(attrs["dilations"]), list(attrs["pads"])) == ([1, 1], [1, 1], [0, 0, 0, 0])
    assert list(attrs["kernel_shape"]) == [3, 3]
    assert max_rel_err(run_dr_sparse_dwconv(X["X"], attrs), run_ort(model, X)[0]) <= 1e-5


def _weight_through(chain: list[str]) -> onnx.ModelProto:
    """The DW model with its weight W computed as DequantizeLinear(int8) or an initializer followed by ``chain``
    (Identity/Cast nodes), as exporters of QDQ models write it."""
    model = dw_model(WEIGHT, BIAS)
    init = next(t for t in model.graph.initializer if t.name == "W")
    model.graph.initializer.remove(init)
    source = "W_src"
    if chain and chain[0] == "DequantizeLinear":
        model.graph.initializer.extend([
            onnx.numpy_helper.from_array(np.round(WEIGHT * 10).astype(np.int8), "W_q"),
            onnx.numpy_helper.from_array(np.float32(0.1), "W_scale")])
        nodes = [helper.make_node("DequantizeLinear", ["W_q", "W_scale"], ["W_dq"], name="dq")]
        source, chain = "W_dq", chain[1:]
    else:
        model.graph.initializer.append(onnx.numpy_helper.from_array(WEIGHT, source))
        nodes = []
    for i, op in enumerate(chain):
        target = "W" if i == len(chain) - 1 else f"W_{i}"
        attrs = {"to": onnx.TensorProto.FLOAT} if op == "Cast" else {}
        nodes.append(helper.make_node(op, [source], [target], name=f"{op.lower()}{i}", **attrs))
        source = target
    if not chain:
        model.graph.node[0].input[1] = source
    existing = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + existing)
    return model


QUANTIZED = "quantized weights: the op is float-only (the layer stays a QDQ Conv, for INT8 engines)"


@pytest.mark.parametrize("chain, reason", [
    (["DequantizeLinear"], QUANTIZED),
    (["DequantizeLinear", "Identity"], QUANTIZED),
    (["DequantizeLinear", "Cast"], QUANTIZED),
    (["DequantizeLinear", "Identity", "Cast", "Identity"], QUANTIZED),
    (["Identity"], "weight is not an initializer"),
    (["Neg"], "weight is not an initializer"),
    (["DequantizeLinear", "Neg"], "weight is not an initializer"),  # computed from the dequantized values
], ids=["dq", "dq_identity", "dq_cast", "dq_chain", "identity", "neg", "dq_neg"])
def test_a_weight_computed_by_nodes_is_refused_with_the_exact_reason(chain: list[str], reason: str) -> None:
    model = _weight_through(chain)
    onnx.checker.check_model(model, full_check=True)
    rewritten, (record,) = rewrite_to_plugin(model, {"dw": np.ones(WEIGHT.shape, bool)})
    assert (record.layer, record.rewritten, record.reason) == ("dw", False, reason)
    assert not custom_nodes(rewritten)


def test_only_depthwise_convs_are_found_without_masks() -> None:
    """group 1 (an ordinary conv), group 2 of 4 channels (weight [4, 2, k, k]) and a 1x1 conv are not DW convs;
    a conv with one input channel and weight [4, 1, 3, 3] is (depth multiplier 4)."""
    rng = np.random.default_rng(5)
    inits = {"w_plain": rng.standard_normal((4, 1, 3, 3)), "w_g2": rng.standard_normal((4, 2, 3, 3)),
             "w_dw": rng.standard_normal((4, 1, 3, 3)), "w_pw": rng.standard_normal((8, 4, 1, 1))}
    nodes = [helper.make_node("Conv", ["X", "w_plain"], ["a"], name="plain", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Conv", ["a", "w_g2"], ["b"], name="grouped2", group=2, kernel_shape=[3, 3],
                              pads=[1] * 4),
             helper.make_node("Conv", ["b", "w_dw"], ["c0"], name="dw", group=4, kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Add", ["c0", "c_add"], ["c"], name="add"),  # a [4, 1, 1] constant is no DW weight
             helper.make_node("Conv", ["c", "w_pw"], ["Y"], name="pw", kernel_shape=[1, 1])]
    inits["c_add"] = rng.standard_normal((4, 1, 1))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [1, 1, 6, 6])],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1, 8, 6, 6])],
                              [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewritten, records = rewrite_to_plugin(model)
    assert [(r.layer, r.rewritten) for r in records] == [("plain", True), ("dw", True)]
    assert [n.op_type for n in rewritten.graph.node] == ["DRSparseDepthwiseConv", "Conv", "DRSparseDepthwiseConv",
                                                         "Add", "Conv"]
    feeds = {"X": rng.standard_normal((1, 1, 6, 6)).astype(np.float32)}
    assert max_rel_err(run_ort(lower(rewritten), feeds)[0], run_ort(model, feeds)[0]) <= 1e-5


def test_each_refusal_names_its_exact_reason() -> None:
    rng = np.random.default_rng(6)

    def model_with(weight_shape, group, bias_from_identity=False, name="dw"):
        weight = rng.standard_normal(weight_shape).astype(np.float32)
        inits = [onnx.numpy_helper.from_array(weight, "W"),
                 onnx.numpy_helper.from_array(np.ones(weight_shape[0], np.float32), "B")]
        nodes = []
        bias = "B"
        if bias_from_identity:
            nodes.append(helper.make_node("Identity", ["B"], ["B2"], name="bias_identity"))
            bias = "B2"
        spatial = len(weight_shape) - 2
        nodes.append(helper.make_node("Conv", ["X", "W", bias], ["Y"], name=name, group=group,
                                      kernel_shape=list(weight_shape[2:]), pads=[0] * (2 * spatial)))
        c_in = group * weight_shape[1]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT,
                                                                             [1, c_in] + [16] * spatial)],
                                  [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weight

    cases = [
        (((8, 4, 3, 3), 2, False), "not a depthwise conv (group != C_in)"),
        (((4, 1, 3, 3, 3), 4, False), "3-D convolution (only 1-D and 2-D are supported)"),
        (((4, 1, 3, 3), 4, True), "bias is not an initializer"),
        (((4, 1, 16, 3), 4, False), "kernel [16, 3] larger than 15"),
    ]
    for (shape, group, identity), reason in cases:
        model, weight = model_with(shape, group, identity)
        _, (record,) = rewrite_to_plugin(model, {"dw": np.ones(weight.shape, bool)})
        assert (record.layer, record.rewritten, record.reason) == ("dw", False, reason), shape
    model, weight = model_with((4, 1, 15, 3), 4)  # the largest kernel the op takes
    _, (record,) = rewrite_to_plugin(model, {"dw": np.ones(weight.shape, bool)})
    assert record.rewritten


def test_a_refused_layer_does_not_stop_the_next_one_and_unnamed_convs_get_a_name() -> None:
    model = _weight_through(["DequantizeLinear"])
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    second = helper.make_node("Conv", ["Y", "W2"], ["Z"], group=40, kernel_shape=[3, 3], pads=[1, 1, 1, 1])  # no name
    model.graph.node.append(second)
    model.graph.initializer.append(onnx.numpy_helper.from_array(WEIGHT, "W2"))
    model.graph.output[0].name = "Z"
    assert conv.name == "dw"
    rewritten, records = rewrite_to_plugin(model)
    assert [(r.layer, r.rewritten) for r in records] == [("DRSparseDepthwiseConv", True)]  # found unnamed, named
    rewritten, records = rewrite_to_plugin(model, {"dw": np.ones(WEIGHT.shape, bool)})
    assert [(r.layer, r.rewritten, r.reason) for r in records] == [("dw", False, QUANTIZED)]
    model.graph.node[-1].name = "dw2"
    rewritten, records = rewrite_to_plugin(model, {"dw": np.ones(WEIGHT.shape, bool),
                                                   "dw2": np.ones(WEIGHT.shape, bool)})
    assert [(r.layer, r.rewritten, r.reason) for r in records] == [("dw", False, QUANTIZED), ("dw2", True, None)]


def test_a_quantized_weight_without_bias_is_refused_as_quantized() -> None:
    model = _weight_through(["DequantizeLinear"])
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    del conv.input[2]
    _, (record,) = rewrite_to_plugin(model, {"dw": np.ones(WEIGHT.shape, bool)})
    assert (record.rewritten, record.reason) == (False, QUANTIZED)


@pytest.mark.parametrize("k_tile, subgemm_channels", [(0, 32), (8, 0), (0, 0)])
def test_tile_and_subgemm_sizes_below_one_are_refused(k_tile: int, subgemm_channels: int) -> None:
    with pytest.raises(DepruneError) as info:
        rewrite_to_plugin(dw_model(WEIGHT, BIAS), k_tile=k_tile, subgemm_channels=subgemm_channels)
    assert str(info.value) == f"k_tile ({k_tile}) and subgemm_channels ({subgemm_channels}) must be >= 1"


def test_tile_and_subgemm_sizes_of_one_are_accepted() -> None:
    model = dw_model(WEIGHT, BIAS)
    rewritten, (record,) = rewrite_to_plugin(model, k_tile=1, subgemm_channels=1)
    assert record.rewritten and record.packed_taps == record.kept_taps == np.count_nonzero(WEIGHT)
    assert max_rel_err(run_dr_sparse_dwconv(X["X"], node_attributes(rewritten.graph.node[0])),
                       run_ort(model, X)[0]) <= 1e-5


def test_unknown_mask_names_list_the_first_five() -> None:
    masks = {f"n{i}": np.ones(WEIGHT.shape, bool) for i in range(6)}
    with pytest.raises(DepruneError) as info:
        rewrite_to_plugin(dw_model(WEIGHT, BIAS), masks)
    assert str(info.value) == "keep_masks names node(s) not in the model: n0, n1, n2, n3, n4"


def test_the_record_names_the_fused_nodes_and_the_bias() -> None:
    _, (record,) = rewrite_to_plugin(dw_model(WEIGHT, BIAS, activation="silu"))
    assert (record.fused_nodes, record.bias_fused, record.no_fusion) == (("gate", "act"), True, None)
    # every sub-GEMM's kept count padded up to the tile (8): at least the kept taps, a whole number of tiles
    assert record.packed_taps >= record.kept_taps and record.packed_taps % 8 == 0
    _, (plain,) = rewrite_to_plugin(dw_model(WEIGHT, None))
    assert (plain.fused_nodes, plain.bias_fused, plain.activation) == ((), False, "none")


@pytest.mark.parametrize("auto_pad, pads", [("SAME_UPPER", [2, 1, 2, 2]), ("SAME_LOWER", [2, 2, 2, 1])])
def test_same_pads_of_a_non_square_dilated_kernel(auto_pad: str, pads: list[int]) -> None:
    """Kernel 3x4, dilation (2, 1), input 9x11: effective kernel 5x4, total pads 4 (rows) and 3 (columns); the
    odd one goes to the end for SAME_UPPER and to the start for SAME_LOWER ([top, left, bottom, right])."""
    weight = RNG.standard_normal((40, 1, 3, 4)).astype(np.float32)
    model = dw_model(weight, BIAS, extra_conv_attrs={"auto_pad": auto_pad}, dilations=(2, 1))
    conv = model.graph.node[0]
    kept = [attr for attr in conv.attribute if attr.name != "strides"]  # the ONNX default, 1
    del conv.attribute[:]
    conv.attribute.extend(kept)
    rewritten, (record,) = rewrite_to_plugin(model)
    assert record.rewritten and list(node_attributes(rewritten.graph.node[0])["pads"]) == pads
    explicit = dw_model(weight, BIAS, pads=pads, dilations=(2, 1))  # ONNX Runtime has no SAME with dilation
    assert max_rel_err(run_ort(lower(rewritten), X)[0], run_ort(explicit, X)[0]) <= 1e-5


def test_a_one_channel_conv_with_an_odd_filter_count_is_a_depthwise_conv() -> None:
    weight = np.random.default_rng(8).standard_normal((3, 1, 3, 3)).astype(np.float32)
    model = dw_model(weight, None, channels=1)
    conv = model.graph.node[0]
    kept = [attr for attr in conv.attribute if attr.name != "group"]  # group 1 by default
    del conv.attribute[:]
    conv.attribute.extend(kept)
    rewritten, (record,) = rewrite_to_plugin(model)
    assert record.rewritten
    feeds = {"X": np.random.default_rng(9).standard_normal((1, 1, 9, 11)).astype(np.float32)}
    assert max_rel_err(run_ort(lower(rewritten), feeds)[0], run_ort(model, feeds)[0]) <= 1e-5
