"""ONNX graph patterns that broke other ONNX tools in public bug reports, rebuilt in code (issue #13).

Each builder returns a small, seeded model of one class: outer-scope reads of a DW weight in If/Loop bodies and
in model-local functions, invalid convs, DW blocks inside functions, initializers that are also graph inputs
(IR 3 and IR 7), 1-D DW convs, DW kernels behind a constant-foldable Reshape(Transpose) chain, auto_pad SAME_*
with a static input and QDQ int8 DW weights. ``ZOO`` lists them with the prune options and the outcome each must
have (a correct result, or one error line containing ``expect``) for tests/test_graph_zoo.py, the bad-input
corpus and the property tests; ``masked_reference`` is the independent ONNX Runtime reference.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from support.dsconv_graphs import BlockSpec, dsconv_network

IR_VERSION = 8
OPSET = 13
OK = "ok"


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _node(model: onnx.ModelProto, stem: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name.startswith(stem))


def _block(channels: int, size: int, stride: int = 1, seed: int = 0) -> onnx.ModelProto:
    """input [1, 8, size, size] -> PW expand to ``channels`` + Relu -> DW 3x3 + Relu -> PW project."""
    return dsconv_network([BlockSpec(8, 8, expand=channels // 8, stride=stride)], size=size, seed=seed)


def _finish(model: onnx.ModelProto) -> onnx.ModelProto:
    """Declare the output's inferred type (ONNX Runtime wants a shape field), then check the whole model."""
    output = model.graph.output[0]
    declared = onnx.ValueInfoProto()
    declared.CopyFrom(output)
    output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    found = next(v for v in inferred.graph.output if v.name == output.name)
    output.CopyFrom(found if found.type.tensor_type.HasField("shape") else declared)
    onnx.checker.check_model(model, full_check=True)
    return model


def _dw_conv(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "Conv" and ".dw" in n.name)


def _tensor_value(name: str, elem: int = TensorProto.FLOAT, shape: list | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


# ----- 1. outer-scope reads of a DW weight ------------------------------------------------------------------

def outer_scope_if() -> onnx.ModelProto:
    """The DW weight of the main graph is also read by both branches of an If (outer-scope reference); the If
    output is added to the block output, so a branch computing with a pruned weight changes the result."""
    model = _block(48, 8)
    dw = _dw_conv(model)
    weight, group = dw.input[1], next(a.i for a in dw.attribute if a.name == "group")
    source = dw.input[0]
    branch_out = {}
    branches = []
    for branch, scale in (("then", 1.0), ("else", -1.0)):
        out = f"{branch}_out"
        scale_name = f"{branch}_scale"
        nodes = [helper.make_node("Conv", [source, weight], [f"{branch}_conv"], name=f"{branch}/dw_conv",
                                  group=group, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                 helper.make_node("Mul", [f"{branch}_conv", scale_name], [out], name=f"{branch}/scale")]
        branches.append(helper.make_graph(nodes, f"{branch}_branch", [], [_tensor_value(out, shape=[1, group, 8, 8])],
                                          [numpy_helper.from_array(np.array(scale, np.float32), scale_name)]))
        branch_out[branch] = out
    cond = "cond"
    model.graph.input.append(_tensor_value(cond, TensorProto.BOOL, []))
    model.graph.node.append(helper.make_node("If", [cond], ["if_out"], name="branchy_if",
                                             then_branch=branches[0], else_branch=branches[1]))
    _reduce_into_output(model, "if_out", group)
    return _finish(model)


def outer_scope_loop() -> onnx.ModelProto:
    """The DW weight is read inside a Loop body (two iterations of DW conv + Relu on a carried tensor)."""
    model = _block(48, 8, seed=1)
    dw = _dw_conv(model)
    weight, group = dw.input[1], next(a.i for a in dw.attribute if a.name == "group")
    body = helper.make_graph(
        [helper.make_node("Conv", ["carried_in", weight], ["body_conv"], name="body/dw_conv", group=group,
                          kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["body_conv"], ["carried_out"], name="body/relu"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body/cond")],
        "loop_body",
        [_tensor_value("iteration", TensorProto.INT64, []), _tensor_value("cond_in", TensorProto.BOOL, []),
         _tensor_value("carried_in", shape=[1, group, 8, 8])],
        [_tensor_value("cond_out", TensorProto.BOOL, []), _tensor_value("carried_out", shape=[1, group, 8, 8])])
    model.graph.initializer.extend([numpy_helper.from_array(np.array(2, np.int64), "trip_count"),
                                    numpy_helper.from_array(np.array(True), "loop_cond")])
    model.graph.node.append(helper.make_node("Loop", ["trip_count", "loop_cond", dw.input[0]], ["loop_out"],
                                             name="twice_loop", body=body))
    _reduce_into_output(model, "loop_out", group)
    return _finish(model)


def outer_scope_nested() -> onnx.ModelProto:
    """The DW weight is read two scopes down: by the branches of an If inside a Loop body."""
    model = _block(48, 8, seed=11)
    dw = _dw_conv(model)
    weight, group = dw.input[1], next(a.i for a in dw.attribute if a.name == "group")
    shape = [1, group, 8, 8]
    branches = [helper.make_graph(
        [helper.make_node("Conv", ["carried_in", weight], [f"{branch}_conv"], name=f"nested/{branch}/dw_conv",
                          group=group, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node(op, [f"{branch}_conv"], [f"{branch}_out"], name=f"nested/{branch}/act")],
        f"{branch}_branch", [], [_tensor_value(f"{branch}_out", shape=shape)])
        for branch, op in (("then", "Relu"), ("else", "Sigmoid"))]
    body = helper.make_graph(
        [helper.make_node("If", ["cond_in"], ["carried_out"], name="nested/if", then_branch=branches[0],
                          else_branch=branches[1]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="nested/cond")],
        "loop_body",
        [_tensor_value("iteration", TensorProto.INT64, []), _tensor_value("cond_in", TensorProto.BOOL, []),
         _tensor_value("carried_in", shape=shape)],
        [_tensor_value("cond_out", TensorProto.BOOL, []), _tensor_value("carried_out", shape=shape)])
    model.graph.initializer.extend([numpy_helper.from_array(np.array(2, np.int64), "trip_count"),
                                    numpy_helper.from_array(np.array(True), "loop_cond")])
    model.graph.node.append(helper.make_node("Loop", ["trip_count", "loop_cond", dw.input[0]], ["loop_out"],
                                             name="nested_loop", body=body))
    _reduce_into_output(model, "loop_out", group)
    return _finish(model)


def outer_scope_function() -> onnx.ModelProto:
    """The DW weight is also passed to a model-local function that runs its own DW conv on it, and a second
    DW conv lives inside the function with a weight of its own (a Constant node): that one is not pruned."""
    model = _block(48, 8, seed=2)
    dw = _dw_conv(model)
    weight, group = dw.input[1], next(a.i for a in dw.attribute if a.name == "group")
    rng = np.random.default_rng(7)
    inner = numpy_helper.from_array(rng.standard_normal((group, 1, 3, 3)).astype(np.float32), "inner_w")
    function = helper.make_function(
        "local", "DWTwice", ["x", "w"], ["y"],
        [helper.make_node("Conv", ["x", "w"], ["a"], name="fn/dw_outer_weight", group=group,
                          kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Constant", [], ["inner_w"], name="fn/inner_weight", value=inner),
         helper.make_node("Conv", ["a", "inner_w"], ["y"], name="fn/dw_own_weight", group=group,
                          kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [helper.make_opsetid("", OPSET)])
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.graph.node.append(helper.make_node("DWTwice", [dw.input[0], weight], ["fn_out"], name="dw_twice",
                                             domain="local"))
    _reduce_into_output(model, "fn_out", group)
    return _finish(model)


def _reduce_into_output(model: onnx.ModelProto, tensor: str, channels: int) -> None:
    """Mix ``tensor`` [1, channels, H, W] into the model output: mean over channels, added to the output."""
    final = next(n for n in model.graph.node if n.name == "output_identity")
    model.graph.node.remove(final)
    model.graph.node.append(helper.make_node("ReduceMean", [tensor], [f"{tensor}_mean"], name=f"{tensor}/mean",
                                             axes=[1], keepdims=1))
    model.graph.node.append(helper.make_node("Add", [final.input[0], f"{tensor}_mean"], ["output"],
                                             name="output_add"))


# ----- 2. invalid convs -------------------------------------------------------------------------------------

def invalid_conv(kind: str) -> Callable[[], onnx.ModelProto]:
    """A DW conv that contradicts itself; ONNX Runtime refuses each of these models when it runs them."""
    def make() -> onnx.ModelProto:
        model = _block(32, 8)
        dw = _dw_conv(model)
        if kind == "channels":  # group 32, weight [32,1,3,3], but the input has 34 channels
            pad = numpy_helper.from_array(np.zeros((1, 2, 8, 8), np.float32), "two_more_channels")
            model.graph.initializer.append(pad)
            concat = helper.make_node("Concat", [dw.input[0], pad.name], ["wider"], name="widen", axis=1)
            model.graph.node.insert(list(model.graph.node).index(dw), concat)
            dw.input[0] = "wider"
        elif kind == "kernel_shape":
            next(a for a in dw.attribute if a.name == "kernel_shape").ints[:] = [5, 5]
        elif kind == "pads":
            next(a for a in dw.attribute if a.name == "pads").ints[:] = [1, 1]
        elif kind == "strides":
            next(a for a in dw.attribute if a.name == "strides").ints[:] = [1, 1, 1]
        elif kind == "bias":
            bias = _initializer(model, dw.input[2])
            bias.CopyFrom(numpy_helper.from_array(np.zeros(31, np.float32), bias.name))
        return model
    return make


# ----- 3. a DW block inside a model-local function ----------------------------------------------------------

def block_in_function() -> onnx.ModelProto:
    """PW expand + DW + Relu sit in a model-local function; a later top-level DW conv is SAME_UPPER padded with
    stride 2, so its pads need the (static) input size that only inference through the function gives."""
    model = _block(32, 12, seed=3)
    nodes = list(model.graph.node)
    expand = next(n for n in nodes if ".expand/" in n.name)
    expand_act = next(n for n in nodes if ".expand_act" in n.name)
    position = nodes.index(expand)
    function = helper.make_function("local", "Expand", ["x", "w", "b"], ["y"],
                                    [helper.make_node("Conv", ["x", "w", "b"], ["e"], kernel_shape=[1, 1]),
                                     helper.make_node("Relu", ["e"], ["y"])], [helper.make_opsetid("", OPSET)])
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.graph.node.remove(expand)
    model.graph.node.remove(expand_act)
    model.graph.node.insert(position, helper.make_node("Expand", list(expand.input), list(expand_act.output),
                                                       name="expand_fn", domain="local"))
    dw = _dw_conv(model)
    kept = [a for a in dw.attribute if a.name not in ("pads", "strides")]
    del dw.attribute[:]
    dw.attribute.extend(kept + [helper.make_attribute("auto_pad", "SAME_UPPER"),
                                helper.make_attribute("strides", [2, 2])])
    return _finish(model)


# ----- 4. initializers that are also graph inputs -----------------------------------------------------------

def initializers_as_inputs(ir_version: int) -> Callable[[], onnx.ModelProto]:
    """Every initializer listed as a graph input too: required by IR < 4, overridable defaults from IR 4 on."""
    def make() -> onnx.ModelProto:
        model = _block(40, 8, seed=4)
        for tensor in model.graph.initializer:
            model.graph.input.append(_tensor_value(tensor.name, tensor.data_type, list(tensor.dims)))
        model.ir_version = ir_version
        return model
    return make


# ----- 5. 1-D depthwise convs -------------------------------------------------------------------------------

def conv1d_dw(channels: int = 40, length: int = 16, kernel: int = 5, stride: int = 1, dilation: int = 1
              ) -> onnx.ModelProto:
    """Speech-style 1-D DSConv: input [1, 8, L] -> PW (k=1) -> DW Conv1d [C,1,k] + Relu -> PW (k=1)."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((channels, 8, 1)) * 0.3).astype(np.float32), "w_pw1"),
             numpy_helper.from_array((rng.standard_normal((channels, 1, kernel))).astype(np.float32), "w_dw"),
             numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(np.float32), "b_dw"),
             numpy_helper.from_array((rng.standard_normal((8, channels, 1)) * 0.2).astype(np.float32), "w_pw2")]
    half = dilation * (kernel - 1) // 2
    nodes = [helper.make_node("Conv", ["input", "w_pw1"], ["e"], name="pw1", kernel_shape=[1]),
             helper.make_node("Relu", ["e"], ["ea"], name="pw1_relu"),
             helper.make_node("Conv", ["ea", "w_dw", "b_dw"], ["d"], name="dw1d", group=channels,
                              kernel_shape=[kernel], pads=[half, dilation * (kernel - 1) - half],
                              strides=[stride], dilations=[dilation]),
             helper.make_node("Relu", ["d"], ["da"], name="dw1d_relu"),
             helper.make_node("Conv", ["da", "w_pw2"], ["output"], name="pw2", kernel_shape=[1])]
    graph = helper.make_graph(nodes, "conv1d_dw", [_tensor_value("input", shape=[1, 8, length])],
                              [_tensor_value("output")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return _finish(model)


# ----- 6. constant-foldable weight chains -------------------------------------------------------------------

def folded_weight_chain() -> onnx.ModelProto:
    """The DW kernel stored as tf2onnx stores NHWC depthwise kernels: [kh, kw, C, 1] -> Transpose -> Reshape."""
    model = _block(40, 8, seed=6)
    dw = _dw_conv(model)
    tensor = _initializer(model, dw.input[1])
    weight = numpy_helper.to_array(tensor)
    hwcm = np.ascontiguousarray(weight.transpose(2, 3, 0, 1))  # [3, 3, C, 1]
    tensor.CopyFrom(numpy_helper.from_array(hwcm, tensor.name + ".hwcm"))
    model.graph.initializer.append(numpy_helper.from_array(np.array(weight.shape, np.int64), "dw_shape"))
    position = list(model.graph.node).index(dw)
    model.graph.node.insert(position, helper.make_node("Reshape", ["dw_chw", "dw_shape"], ["dw_kernel"],
                                                       name="dw_kernel_reshape"))
    model.graph.node.insert(position, helper.make_node("Transpose", [tensor.name], ["dw_chw"],
                                                       name="dw_kernel_transpose", perm=[2, 3, 0, 1]))
    dw.input[1] = "dw_kernel"
    return _finish(model)


def unfoldable_weight_chain() -> onnx.ModelProto:
    """The DW kernel scaled by a graph input at run time: no folder can make it a constant."""
    model = folded_weight_chain()
    model.graph.input.append(_tensor_value("kernel_scale", shape=[]))
    reshape = _node(model, "dw_kernel_reshape")
    reshape.output[0] = "dw_kernel_unscaled"
    position = list(model.graph.node).index(reshape) + 1
    model.graph.node.insert(position, helper.make_node("Mul", ["dw_kernel_unscaled", "kernel_scale"],
                                                       ["dw_kernel"], name="dw_kernel_scale"))
    return _finish(model)


# ----- 7. auto_pad SAME_* with a static input ---------------------------------------------------------------

def same_padded(auto_pad: str, stride: int) -> Callable[[], onnx.ModelProto]:
    def make() -> onnx.ModelProto:
        model = _block(40, 12, seed=8)
        dw = _dw_conv(model)
        kept = [a for a in dw.attribute if a.name not in ("pads", "strides")]
        del dw.attribute[:]
        dw.attribute.extend(kept + [helper.make_attribute("auto_pad", auto_pad),
                                    helper.make_attribute("strides", [stride, stride])])
        return _finish(model)
    return make


# ----- 8. QDQ int8 DW weights -------------------------------------------------------------------------------

def qdq_dw_weight() -> onnx.ModelProto:
    """The DW weight as int8 + per-channel scale behind a DequantizeLinear (QDQ export), in a float model."""
    model = _block(40, 8, seed=9)
    dw = _dw_conv(model)
    tensor = _initializer(model, dw.input[1])
    weight = numpy_helper.to_array(tensor)
    scale = (np.abs(weight).reshape(weight.shape[0], -1).max(axis=1) / 127).astype(np.float32)
    tensor.CopyFrom(numpy_helper.from_array(
        np.clip(np.round(weight / scale[:, None, None, None]), -127, 127).astype(np.int8), tensor.name))
    model.graph.initializer.extend([numpy_helper.from_array(scale, "dw_scale"),
                                    numpy_helper.from_array(np.zeros_like(scale, np.int8), "dw_zero_point")])
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", [tensor.name, "dw_scale", "dw_zero_point"],
                                                ["dw_weight_dq"], name="dw_weight_dq", axis=0))
    dw.input[1] = "dw_weight_dq"
    return _finish(model)


# ----- 9. a layer pruned to (almost) nothing ----------------------------------------------------------------

def small_dw() -> onnx.ModelProto:
    """One DW layer of 40 channels (sub-GEMMs of 32 and 8 channels): ratio 0.999 prunes every weight."""
    return _finish(_block(40, 8, seed=10))


@dataclass(frozen=True)
class ZooCase:
    name: str
    build: Callable[[], onnx.ModelProto]
    args: tuple[str, ...] = ()  # prune options beyond IN OUT
    expect: str = OK            # OK, or a text the one error line must contain


DW = "blocks.0.dw/Conv"  # the stem of the DW conv's node name in the models built on dsconv_network

ZOO: list[ZooCase] = [
    ZooCase("outer-scope read in If branches", outer_scope_if),
    ZooCase("outer-scope read in a Loop body", outer_scope_loop),
    ZooCase("outer-scope read in an If inside a Loop body", outer_scope_nested),
    ZooCase("DW weight passed to a model-local function", outer_scope_function),
    ZooCase("group 32 conv on 34 channels", invalid_conv("channels"), expect=f"Conv node '{DW}"),
    ZooCase("kernel_shape differs from the weight", invalid_conv("kernel_shape"), expect="kernel_shape [5, 5]"),
    ZooCase("2 pads on a 2-D conv", invalid_conv("pads"), expect="pads has 2 values"),
    ZooCase("3 strides on a 2-D conv", invalid_conv("strides"), expect="strides has 3 values"),
    ZooCase("bias shorter than the output channels", invalid_conv("bias"), expect="bias"),
    ZooCase("DW block in a model-local function, SAME stride 2 after it", block_in_function),
    ZooCase("IR 3: initializers are graph inputs", initializers_as_inputs(3)),
    ZooCase("IR 7: initializers are graph inputs", initializers_as_inputs(7), expect="--drop-initializer-inputs"),
    ZooCase("IR 7: initializers are graph inputs, --drop-initializer-inputs", initializers_as_inputs(7),
            ("--drop-initializer-inputs",)),
    ZooCase("1-D DW conv", conv1d_dw),
    ZooCase("1-D DW conv, stride 2, dilation 2, k 3", lambda: conv1d_dw(channels=72, kernel=3, stride=2,
                                                                         dilation=2)),
    ZooCase("DW kernel Reshape(Transpose(HWCM initializer))", folded_weight_chain),
    ZooCase("DW kernel scaled by a graph input", unfoldable_weight_chain, expect="graph input 'kernel_scale'"),
    ZooCase("auto_pad SAME_UPPER stride 2, static", same_padded("SAME_UPPER", 2)),
    ZooCase("auto_pad SAME_LOWER stride 2, static", same_padded("SAME_LOWER", 2)),
    ZooCase("QDQ int8 DW weight", qdq_dw_weight),
    ZooCase("DW ratio 0.999", small_dw, ("--dw-ratio", "0.999")),
]


def zoo_case(name: str) -> ZooCase:
    return next(case for case in ZOO if case.name == name)


# ----- the independent reference -----------------------------------------------------------------------------

def masked_reference(original: onnx.ModelProto, masks: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``original`` with each named top-level conv computing on ``weight * mask`` through a Mul node inserted
    in front of it (the mask a Constant node). Nothing the tool wrote is used: whatever the weight is (an
    initializer shared with a subgraph, a QDQ or folded chain, an IR 3 input), ONNX Runtime applies the mask."""
    reference = onnx.ModelProto()
    reference.CopyFrom(original)
    nodes = list(reference.graph.node)
    for name, keep in masks.items():
        conv = next(n for n in nodes if n.name == name)
        mask, masked = f"{name}.reference_mask", f"{name}.reference_weight"
        position = list(reference.graph.node).index(conv)
        reference.graph.node.insert(position, helper.make_node("Mul", [conv.input[1], mask], [masked],
                                                               name=f"{name}/reference_mul"))
        reference.graph.node.insert(position, helper.make_node(
            "Constant", [], [mask], name=f"{name}/reference_mask",
            value=numpy_helper.from_array(keep.astype(np.float32), mask)))
        conv.input[1] = masked
    return reference


def zoo_feeds(model: onnx.ModelProto, seed: int = 0, cond: bool = True) -> dict[str, np.ndarray]:
    """Seeded inputs for a zoo model: normal float tensors, ``cond`` for the If model."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if tensor.elem_type == TensorProto.BOOL:
            feeds[value.name] = np.array(cond)
        else:
            feeds[value.name] = rng.standard_normal([d.dim_value for d in tensor.shape.dim]).astype(np.float32)
    return feeds
