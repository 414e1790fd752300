"""ONNX <-> PyTorch for fine-tuning: convert with onnx2torch, train, write the weights back into the ONNX graph.

Why write back instead of ``torch.onnx.export``: fine-tuning with fixed masks changes weight *values* only
(shapes never change), so the trained model is the input graph with new initializer values. Writing them back
keeps every node name, op, opset and the plan's layer names exactly, so the plan re-applies by name and the
result can be rewritten to the plugin format like any pruned model; an exported graph would rename every
node and initializer and could decompose or re-fuse ops.

The write-back needs to know which ONNX initializer every trained parameter came from. onnx2torch names each
module after its node (``OnnxGraph`` naming: '.' -> '/', duplicates numbered), so a module's parameters are
matched to that node's initializer inputs by exact value (as is, or transposed for a Gemm with transB=0).
Parameters that match nothing, and every parameter of an initializer that several nodes share, are frozen:
they keep their ONNX values, and the result lists them.

Batch: exported models often fix the batch at 1 (input [1,3,224,224], ``Reshape`` to [1, -1]). ``batchable``
returns a copy for training only, with a symbolic batch dimension and such Reshape targets turned into 0
("copy this dimension"); it is used when it gives the same per-sample outputs, else training runs one sample at
a time (``micro_batch`` 1). The written-back model is always the original graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.folding import bypass_identity_chains

# Converted model vs ONNX Runtime, relative to the output's magnitude.
CONVERSION_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ParameterBinding:
    """One trainable parameter (or BatchNorm running statistic) and the ONNX initializer it is written back to."""

    parameter: str        # torch name, e.g. "Conv@2.weight"
    node: str             # ONNX node name
    initializer: str
    transposed: bool      # parameter == initializer.T (Gemm with transB = 0 becomes nn.Linear)


@dataclass
class TorchModel:
    """A converted model, its parameter bindings and the frozen parameters (with why)."""

    module: torch.nn.Module
    bindings: list[ParameterBinding]
    frozen: dict[str, str] = field(default_factory=dict)
    micro_batch: int | None = None  # None: any batch; 1: the graph only runs batch 1

    def binding_for(self, node: str, initializer: str) -> ParameterBinding | None:
        for binding in self.bindings:
            if binding.node == node and binding.initializer == initializer:
                return binding
        return None


def onnx2torch_modules(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Module name -> ONNX node, by onnx2torch's own naming (so it stays right for odd node names)."""
    from onnx2torch.onnx_graph import OnnxGraph

    return {name: node.proto for name, node in OnnxGraph(model.graph).nodes.items()}


def _initializer_users(model: onnx.ModelProto) -> dict[str, int]:
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in set(node.input):
            users[name] = users.get(name, 0) + 1
    return users


def _match(value: np.ndarray, candidates: dict[str, np.ndarray]) -> tuple[str, bool] | None:
    """The initializer (and whether transposed) whose value is exactly ``value``."""
    for name, array in candidates.items():
        if array.shape == value.shape and np.array_equal(array, value):
            return name, False
        if array.ndim == 2 and array.T.shape == value.shape and np.array_equal(array.T, value):
            return name, True
    return None


def bind_parameters(module: torch.nn.Module, model: onnx.ModelProto
                    ) -> tuple[list[ParameterBinding], dict[str, str]]:
    """Match every parameter of the converted ``module`` to the initializer of ``model`` it was made from."""
    initializers = {t.name: t for t in model.graph.initializer}
    users = _initializer_users(model)
    bindings: list[ParameterBinding] = []
    frozen: dict[str, str] = {}
    for module_name, node in onnx2torch_modules(model).items():
        owner = module.get_submodule(module_name)
        candidates = {name: numpy_helper.to_array(initializers[name]) for name in node.input if name in initializers}
        for local, parameter in owner.named_parameters():
            full = f"{module_name}.{local}"
            found = _match(parameter.detach().cpu().numpy(), candidates)
            if found is None:
                frozen[full] = "matches no initializer of its node"
            elif users[found[0]] > 1:
                frozen[full] = f"initializer '{found[0]}' is shared by {users[found[0]]} nodes"
            else:
                bindings.append(ParameterBinding(full, node.name, found[0], found[1]))
                del candidates[found[0]]  # equal values (BN scale = variance = 1) never bind twice
        for local, buffer in owner.named_buffers():  # BatchNorm running statistics (trained in BN train mode)
            found = _match(buffer.detach().cpu().numpy(), candidates) if buffer.is_floating_point() else None
            if found is not None and users[found[0]] == 1:
                bindings.append(ParameterBinding(f"{module_name}.{local}", node.name, found[0], found[1]))
                del candidates[found[0]]
    bound = {b.parameter for b in bindings}
    for name, parameter in module.named_parameters():
        if name not in bound:
            frozen.setdefault(name, "not made from an ONNX node's initializer")
            parameter.requires_grad_(False)
    return bindings, frozen


def batchable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that accepts any batch (see the module docstring); ``model`` is not changed."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    initializer_names = {t.name for t in graph.initializer}
    for value in [*(v for v in graph.input if v.name not in initializer_names), *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "batch"
    del graph.value_info[:]
    targets = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in targets:
            continue
        shape = numpy_helper.to_array(targets[node.input[1]])
        if shape.ndim == 1 and shape.size > 1 and shape[0] == 1:
            new_name = f"{node.input[1]}.any_batch"
            if new_name not in targets:
                targets[new_name] = numpy_helper.from_array(np.concatenate([[0], shape[1:]]).astype(shape.dtype),
                                                            new_name)
                graph.initializer.append(targets[new_name])
            node.input[1] = new_name
    return copy


def _onnxruntime_output(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _torch_output(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    device = next(module.parameters()).device
    with torch.no_grad():
        out = module(torch.from_numpy(x).to(device))
    return (out[0] if isinstance(out, (list, tuple)) else out).cpu().numpy()


def to_torch(model: onnx.ModelProto, label: str, input_shape: tuple[int, ...]) -> TorchModel:
    """Convert ``model`` with onnx2torch and check it: equal to ONNX Runtime within CONVERSION_TOLERANCE.

    ``label`` names the model in errors; ``input_shape`` is its [1, C, H, W] input.
    """
    from onnx2torch import convert

    trainable = batchable(model)
    bypass_identity_chains(trainable)  # onnx2torch needs Conv weights as initializers; names stay for write-back
    try:
        module = convert(trainable)
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ... for ops it lacks
        raise DepruneError(f"{label}: onnx2torch cannot convert it ({type(exc).__name__}: {exc})") from None
    module.eval()  # fixed BatchNorm statistics and no dropout, during training too
    x = np.random.default_rng(0).standard_normal((2, *input_shape[1:])).astype(np.float32)
    reference = _onnxruntime_output(model, x[:1])
    got = _torch_output(module, x[:1])
    scale = max(1.0, float(np.abs(reference).max()))
    if got.shape != reference.shape or float(np.abs(got - reference).max()) > CONVERSION_TOLERANCE * scale:
        raise DepruneError(f"{label}: the PyTorch conversion differs from ONNX Runtime "
                           f"(max error {float(np.abs(got - reference).max()):.3g}); cannot fine-tune it")
    try:
        pair = _torch_output(module, x)
        per_sample = np.concatenate([got, _torch_output(module, x[1:])])
        any_batch = pair.shape == per_sample.shape and np.allclose(pair, per_sample, rtol=1e-4, atol=1e-5)
    except (RuntimeError, ValueError):  # a shape fixed somewhere else in the graph
        any_batch = False
    bindings, frozen = bind_parameters(module, trainable)
    return TorchModel(module, bindings, frozen, micro_batch=None if any_batch else 1)


def write_back(model: onnx.ModelProto, torch_model: TorchModel) -> onnx.ModelProto:
    """A copy of ``model`` whose bound initializers hold the trained parameter values (dtype preserved)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    position = {t.name: i for i, t in enumerate(copy.graph.initializer)}
    parameters = {**dict(torch_model.module.named_parameters()), **dict(torch_model.module.named_buffers())}
    for binding in torch_model.bindings:
        tensor = copy.graph.initializer[position[binding.initializer]]
        value = parameters[binding.parameter].detach().cpu().numpy()
        value = value.T if binding.transposed else value
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value).astype(dtype), binding.initializer))
    return copy
