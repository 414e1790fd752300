"""Calibrated PW removal (``prune --calib`` with ``--pw-ratio``): which channels to remove, from activations, and
a least-squares reconstruction of every 1x1 conv that reads a tensor which lost channels.

Why: removing PW channels without training is as destructive as one-shot DW pruning (issue 14: MobileNetV2 at
--pw-ratio 0.2 --pw-scope all, KL 12 and 0% agreement). Channel pruning by reconstruction (He et al. 2017, "Channel
Pruning for Accelerating Very Deep Neural Networks"; the second step of ThiNet) recovers most of it: a 1x1 conv
is a linear map of its input channels at every spatial position, so after its input loses channels the kept
columns and the bias can be re-solved to reproduce what the unpruned model computed. Every spatial position of
every calibration sample is a sample, so a few images give thousands per conv.

What is fitted: readers in graph order. For reader r (Conv, 1x1, group 1) the input X_p is the *partly
reconstructed, reduced* model's input to r (kept channels only, earlier readers already refit), the target is
the *unpruned* model's conv output W X + b. Normal equations of [W' b'] over [X_p 1]: G = [X_p 1]^T [X_p 1] and
B = [X_p 1]^T [X 1] [W b]^T, accumulated over positions; damped (``damp`` * mean diagonal, towards the kept
columns of W) and solved for all output channels at once. The groups, their alignment and which channels go are
the plan's; only the readers' remaining weights and biases change.

The same solve serves ``--calib-project`` (``refit_projections``): after the DW refit, the projection PW of
every block whose DW layer was pruned is refit with all its columns, damped towards its own weights.

Selection (``channel_energy``): mean squared activation per channel of every group-1 Conv's input on the
unpruned model, which ``pw.importance.group_importance`` turns into each channel's energy into its readers.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from deprune_onnx.analysis import ModelAnalysis
from deprune_onnx.onnx_io.graph import GraphIndex, node_attributes
from deprune_onnx.progress import progress
from deprune_onnx.pw.dependency import build_dependency_graph
from deprune_onnx.pw.plan import PWPlan
from deprune_onnx.pw.removal import removed_channels
from deprune_onnx.recovery.refit import DEFAULT_DAMP, ParameterWriter, analysis_input
from deprune_onnx.recovery.staged import StagedForward

# --calib-project's damping, relative to the mean diagonal of the projection's Gram matrix: chosen on the choice
# images (MobileNetV2, --allocate kl at 0.5: KL 1.11 without, 0.79 / 0.81 / 0.93 at 0.3 / 1 / 3, with 0.1 the
# calibration KL fell to 0.005 but the held-out one only to 0.83: it overfits).
PROJECTION_DAMP = 0.3


def _pointwise_readers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Conv nodes with group 1 reading a computed tensor, in graph order (``pointwise``: 1x1 kernels only)."""
    initializers = {t.name for t in model.graph.initializer} | {v.name for v in model.graph.input}
    return [node for node in model.graph.node if node.op_type == "Conv" and node.input[0] not in initializers
            and int(node_attributes(node).get("group", 1)) == 1]


def _is_pointwise(index: GraphIndex, node: onnx.NodeProto) -> bool:
    weight = index.constant(node.input[1])
    attributes = node_attributes(node)
    return (weight is not None and weight.ndim == 4 and weight.shape[2:] == (1, 1)
            and not any(attributes.get("pads", [0])) and list(attributes.get("dilations", [1, 1])) == [1, 1])


def _positions(x: np.ndarray, strides: tuple[int, int]) -> np.ndarray:
    """[N, C, H, W] -> [N*H'*W', C]: the input pixels a strided 1x1 conv reads, one row per output position."""
    x = x[:, :, ::strides[0], ::strides[1]]
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]).astype(np.float64)


def channel_energy(model: onnx.ModelProto, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Mean squared activation per channel of every group-1 Conv's input tensor, over the calibration samples."""
    tensors = list(dict.fromkeys(node.input[0] for node in _pointwise_readers(model)))
    run = StagedForward(model, {analysis_input(model): inputs})
    energy = {}
    for tensor in progress(tensors, "pw energy", unit="tensor"):
        x = run.advance([tensor])[tensor].astype(np.float64)
        energy[tensor] = np.square(x).mean(axis=tuple(a for a in range(x.ndim) if a != 1))
    return energy


def refit_pw_readers(model: onnx.ModelProto, original: onnx.ModelProto, plan: PWPlan, inputs: np.ndarray,
                     damp: float = DEFAULT_DAMP) -> list[dict]:
    """Refit, in ``model`` (``original`` with ``plan`` applied), every 1x1 group-1 Conv whose input lost channels,
    against ``original``. Returns one record per reader: relative output residual before (kept columns as they
    were) and after the refit, on the calibration samples."""
    removed = removed_channels(build_dependency_graph(original), plan)
    index_original = GraphIndex(original.graph)
    index = GraphIndex(model.graph)
    readers = [node for node in _pointwise_readers(model)
               if node.input[0] in removed and _is_pointwise(index, node)]
    input_name = analysis_input(model)
    pruned_run = StagedForward(model, {input_name: inputs})
    reference_run = StagedForward(original, {input_name: inputs})
    writer = ParameterWriter(model)
    originals = {node.name: node for node in original.graph.node}
    records = []
    for node in progress(readers, "pw refit", unit="conv"):
        source = originals[node.name]
        weight = index_original.constant(source.input[1]).astype(np.float64)
        bias = index_original.constant(source.input[2]) if len(source.input) > 2 and source.input[2] else None
        bias = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
        # A reader may also lose output channels (it produces a pruned group): only its kept outputs are fitted.
        outputs = np.setdiff1d(np.arange(weight.shape[0]), removed.get(node.output[0], np.zeros(0, np.int64)))
        weight, bias = weight[outputs], bias[outputs]
        target_w = np.concatenate([weight[:, :, 0, 0], bias[:, None]], axis=1)            # [out, C+1]
        kept = np.setdiff1d(np.arange(weight.shape[1]), removed[node.input[0]])
        strides = tuple(node_attributes(node).get("strides", [1, 1]))
        xp = _positions(pruned_run.advance([node.input[0]])[node.input[0]], strides)
        xr = _positions(reference_run.advance([node.input[0]])[node.input[0]], strides)
        start = np.concatenate([weight[:, kept, 0, 0], bias[:, None]], axis=1).T           # [K+1, out]
        solution, before, after = _least_squares(xp, xr, target_w, start, damp)
        record = {"layer": node.name, "input_channels_removed": int(len(removed[node.input[0]])),
                  "positions": int(len(xp)), "residual_before": before, "residual_after": after, "damp": damp}
        dtype = index.constant(node.input[1]).dtype
        writer.write(node.name, 1, solution[:-1].T.reshape(weight.shape[0], len(kept), 1, 1).astype(dtype),
                     "pw_refit_weight")
        writer.write(node.name, 2, solution[-1].astype(dtype), "pw_refit_bias")
        records.append(record)
    return records


def _least_squares(xp: np.ndarray, xr: np.ndarray, target_w: np.ndarray, start: np.ndarray, damp: float
                   ) -> tuple[np.ndarray, float, float]:
    """[K+1, out] weights+bias reproducing ``target_w`` [out, C+1] applied to the reference positions ``xr``
    [P, C] from the model's positions ``xp`` [P, K], damped towards ``start`` [K+1, out] by ``damp`` * the mean
    diagonal of the Gram matrix; and the relative residual of ``start`` and of the solution."""
    ones = np.ones((len(xp), 1))
    xp, xr = np.concatenate([xp, ones], axis=1), np.concatenate([xr, ones], axis=1)
    gram = xp.T @ xp                                                                      # [K+1, K+1]
    rhs = (xp.T @ xr) @ target_w.T                                                        # [K+1, out]
    target_energy = float(np.einsum("ok,kl,ol->", target_w, xr.T @ xr, target_w))
    lam = damp * float(np.mean(np.diag(gram)[:-1])) + 1e-12
    solution = np.linalg.solve(gram + lam * np.eye(len(gram)), rhs + lam * start)

    def residual(z: np.ndarray) -> float:
        return float(np.einsum("ko,kl,lo->", z, gram, z) - 2.0 * np.einsum("ko,ko->", z, rhs)
                     + target_energy) / max(target_energy, 1e-30)

    return solution, residual(start), residual(solution)


def refit_projections(model: onnx.ModelProto, reference: onnx.ModelProto, analysis: ModelAnalysis,
                      pruned: Sequence[str], inputs: np.ndarray, damp: float = PROJECTION_DAMP) -> list[dict]:
    """``--calib-project``: after the DW refit, refit in ``model`` the projection PW (1x1, group 1) of every
    DSConv block whose DW layer is in ``pruned``, in graph order, so that fed the partly reconstructed pruned
    model's input it reproduces ``reference``'s (the model before DW pruning) conv output at every position of
    every calibration sample. Why: the DW refit fixes each pruned channel alone (kh*kw+1 weights); the
    projection mixes all channels and can undo what the kept taps cannot. It has C_in+1 weights per output, so
    it is damped hard (``PROJECTION_DAMP``). Returns one record per conv: residual before -> after."""
    blocks = [block for block in analysis.blocks if block.dw in set(pruned) and block.project_pw]
    index_reference, index = GraphIndex(reference.graph), GraphIndex(model.graph)
    nodes = {node.name: node for node in model.graph.node}
    projections = [nodes[b.project_pw] for b in blocks
                   if b.project_pw in nodes and _is_pointwise(index, nodes[b.project_pw])
                   and int(node_attributes(nodes[b.project_pw]).get("group", 1)) == 1]
    order = {node.name: position for position, node in enumerate(model.graph.node)}
    projections.sort(key=lambda node: order[node.name])
    input_name = analysis_input(model)
    pruned_run = StagedForward(model, {input_name: inputs})
    reference_run = StagedForward(reference, {input_name: inputs})
    writer = ParameterWriter(model)
    records = []
    for node in progress(projections, "projection refit", unit="conv"):
        weight = index_reference.constant(node.input[1]).astype(np.float64)
        bias = index_reference.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        bias = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
        target_w = np.concatenate([weight[:, :, 0, 0], bias[:, None]], axis=1)            # [out, C+1]
        strides = tuple(node_attributes(node).get("strides", [1, 1]))
        xp = _positions(pruned_run.advance([node.input[0]])[node.input[0]], strides)
        xr = _positions(reference_run.advance([node.input[0]])[node.input[0]], strides)
        solution, before, after = _least_squares(xp, xr, target_w, target_w.T, damp)
        dtype = index.constant(node.input[1]).dtype
        writer.write(node.name, 1, solution[:-1].T.reshape(weight.shape).astype(dtype), "projection_weight")
        writer.write(node.name, 2, solution[-1].astype(dtype), "projection_bias")
        records.append({"layer": node.name, "positions": int(len(xp)), "residual_before": before,
                        "residual_after": after, "damp": damp})
    return records
