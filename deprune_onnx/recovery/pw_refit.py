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

The same solve serves the projection refit of ``--calib`` (``ProjectionRefit``, on unless ``--no-calib-project``):
interleaved with the DW refit, the projection PW of every block whose DW layer was pruned is refit with all its
columns, damped towards its own weights, to reproduce the block's output (the skip connection's error included).

Selection (``channel_energy``): mean squared activation per channel of every group-1 Conv's input on the
unpruned model, which ``pw.importance.group_importance`` turns into each channel's energy into its readers.
"""
from __future__ import annotations

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

# The projection refit's damping, relative to the mean diagonal of the projection's Gram matrix: chosen on the choice
# images (MobileNetV2, --allocate kl at 0.5). Refit after all DW layers, conv output as target: KL 1.11 without,
# 0.79 / 0.81 / 0.93 at 0.3 / 1 / 3, at 0.1 the calibration KL fell to 0.005 but the held-out one only to 0.83
# (it overfits). Block output as target (choice images x 4 views), after all DW layers: 0.81 / 0.67 / 0.67 / 0.75
# at 0.1 / 0.3 / 1 / 3; interleaved with the DW refit: 0.44 / 0.42 at 0.3 / 1 (x10 views 0.325 / 0.322): kept.
PROJECTION_DAMP = 0.3
# What a projection whose output reaches a residual Add (directly, or through BatchNormalization or Identity) is
# fitted to (the report's ``target``).
BLOCK_OUTPUT_TARGET = "block output (residual Add, its other operand's error included)"


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


def _sum_partner(index: GraphIndex, conv_output: str) -> tuple[str, np.ndarray | None] | None:
    """The computed other operand of the two-input Add that ``conv_output`` reaches (directly, or through
    Identity and inference-mode BatchNormalization nodes that alone read it: a residual join), and the per-channel
    factor those BatchNormalizations multiply the conv output by (None: none in between); None when there is no
    such Add.

    Why: the model's value after the Add is a * conv + c + partner; when the partner carries an error (earlier
    layers pruned), a refit that reproduces the Add's unpruned value, conv_ref + (partner_ref - partner) / a,
    corrects it where it is carried instead of passing it on."""
    tensor, factor = conv_output, None
    for _ in range(4):
        user = index.only_consumer(tensor)
        if user is None:
            return None
        if user.op_type == "Add" and len(user.input) == 2 and list(user.input).count(tensor) == 1:
            partner = next(name for name in user.input if name != tensor)
            return (partner, factor) if index.constant(partner) is None else None
        if user.op_type == "BatchNormalization" and len(user.output) == 1 and user.input[0] == tensor:
            scale, variance = index.constant(user.input[1]), index.constant(user.input[4])
            if scale is None or variance is None or node_attributes(user).get("training_mode", 0):
                return None
            epsilon = float(node_attributes(user).get("epsilon", 1e-5))
            multiplier = scale.astype(np.float64) / np.sqrt(variance.astype(np.float64) + epsilon)
            if not np.all(np.abs(multiplier) > 1e-12):
                return None  # a channel the BatchNormalization zeroes cannot carry a correction
            factor = multiplier if factor is None else factor * multiplier
        elif user.op_type != "Identity":
            return None
        tensor = user.output[0]
    return None


def _partner_error(partner: tuple[str, np.ndarray | None], pruned_run: StagedForward, reference_run: StagedForward,
                   shape: tuple[int, int]) -> np.ndarray | None:
    """[P, out] unpruned minus pruned value of the Add's other operand, divided by the factor between the conv
    output and the Add (``_sum_partner``); None when it is not of the conv output's ``shape`` [P, out] (a
    broadcasting Add)."""
    name, factor = partner
    error = (_positions(reference_run.advance([name])[name], (1, 1))
             - _positions(pruned_run.advance([name])[name], (1, 1)))
    if error.shape != shape:
        return None
    return error if factor is None else error / factor


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


def _least_squares(xp: np.ndarray, xr: np.ndarray, target_w: np.ndarray, start: np.ndarray, damp: float,
                   offset: np.ndarray | None = None, keep: np.ndarray | None = None
                   ) -> tuple[np.ndarray, float, float]:
    """[K+1, out] weights+bias reproducing ``target_w`` [out, C+1] applied to the reference positions ``xr``
    [P, C] (plus ``offset`` [P, out] when given) from the model's positions ``xp`` [P, K], damped towards
    ``start`` [K+1, out] by ``damp`` * the mean diagonal of the Gram matrix; and the relative residual of
    ``start`` and of the solution. ``keep`` [out, K] (None: all): the weights allowed to be non-zero, each output
    solved over its own (the others stay exactly 0, e.g. a 2:4 pattern)."""
    ones = np.ones((len(xp), 1))
    xp, xr = np.concatenate([xp, ones], axis=1), np.concatenate([xr, ones], axis=1)
    gram = xp.T @ xp                                                                      # [K+1, K+1]
    rhs = (xp.T @ xr) @ target_w.T                                                        # [K+1, out]
    target_energy = float(np.einsum("ok,kl,ol->", target_w, xr.T @ xr, target_w))
    if offset is not None:  # ||xr W^T + d||^2 = W xr^T xr W^T + 2 <xr W^T, d> + ||d||^2
        rhs += xp.T @ offset
        target_energy += 2.0 * float(np.einsum("ko,ko->", xr.T @ offset, target_w.T)) + float(np.sum(offset ** 2))
    lam = damp * float(np.mean(np.diag(gram)[:-1])) + 1e-12
    damped = gram + lam * np.eye(len(gram))
    if keep is None or keep.all():
        solution = np.linalg.solve(damped, rhs + lam * start)
    else:
        solution = np.zeros_like(start)
        for output, row in enumerate(keep):
            free = np.append(row, True)                                                   # the bias is free
            solution[free, output] = np.linalg.solve(damped[np.ix_(free, free)],
                                                     rhs[free, output] + lam * start[free, output])

    def residual(z: np.ndarray) -> float:
        return float(np.einsum("ko,kl,lo->", z, gram, z) - 2.0 * np.einsum("ko,ko->", z, rhs)
                     + target_energy) / max(target_energy, 1e-30)

    return solution, residual(start), residual(solution)


class ProjectionRefit:
    """The projection refit of ``--calib`` (``CalibOptions.project``): right after each pruned DW layer's refit,
    refit its block's projection PW (1x1, group 1) so that, fed the partly reconstructed pruned model's input, the
    block reproduces the unpruned model's (``reference``: the model before DW pruning) output at every position
    of every calibration sample.

    Why: the DW refit fixes each pruned channel alone (kh*kw+1 weights); the projection mixes all channels and
    can undo part of what the kept taps cannot. Two choices make it generalise (docs/accuracy.md, measured on
    the choice images):
    - interleaved (``recovery.refit.reconstruct`` calls ``after_dw`` per layer): every later DW layer and
      projection is fitted on the input the corrected blocks before it produce, as in sequential layer-wise
      reconstruction (SparseGPT, OBC), instead of all DW layers first and the projections after;
    - the block output, not the conv output: where the projection's output reaches a residual Add (directly, or
      through BatchNormalization or Identity, ``_sum_partner``), the target adds the skip input's error (unpruned
      minus pruned, divided by the BatchNormalizations' factor), so the residual stream's accumulated error is
      corrected where it is carried instead of passed on.
    It has C_in+1 weights per output, so it is damped hard (``PROJECTION_DAMP``). ``records``: one per conv."""

    def __init__(self, reference: onnx.ModelProto, analysis: ModelAnalysis, damp: float = PROJECTION_DAMP) -> None:
        self.damp = damp
        self.records: list[dict] = []
        self._index = GraphIndex(reference.graph)
        self._nodes = {node.name: node for node in reference.graph.node}  # the pruned model's names are the same
        self._blocks = {block.dw: block for block in analysis.blocks if block.project_pw in self._nodes}

    def after_dw(self, dw_name: str, pruned_run: StagedForward, reference_run: StagedForward,
                 writer: ParameterWriter) -> None:
        """Refit the projection of ``dw_name``'s block (nothing when it has no 1x1 group-1 projection)."""
        block = self._blocks.get(dw_name)
        if block is None:
            return
        node = self._nodes[block.project_pw]
        if not _is_pointwise(self._index, node) or int(node_attributes(node).get("group", 1)) != 1:
            return
        stored = self._index.constant(node.input[1])
        weight = stored.astype(np.float64)
        bias = self._index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        bias = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64)
        target_w = np.concatenate([weight[:, :, 0, 0], bias[:, None]], axis=1)            # [out, C+1]
        strides = tuple(node_attributes(node).get("strides", [1, 1]))
        xp = _positions(pruned_run.advance([node.input[0]])[node.input[0]], strides)
        xr = _positions(reference_run.advance([node.input[0]])[node.input[0]], strides)
        partner = _sum_partner(self._index, node.output[0])
        offset = None if partner is None else _partner_error(partner, pruned_run, reference_run,
                                                             (len(xp), weight.shape[0]))
        # Weights that are exactly 0 in the model being refit (a 2:4 PW pattern, --pw-method nm24) stay 0.
        current = writer.current(node.name, 1)
        keep = np.ones(weight.shape[:2], bool) if current is None else current[:, :, 0, 0] != 0
        start = np.concatenate([np.where(keep, weight[:, :, 0, 0], 0.0), bias[:, None]], axis=1).T
        solution, before, after = _least_squares(xp, xr, target_w, start, self.damp, offset, keep)
        writer.write(node.name, 1, solution[:-1].T.reshape(weight.shape).astype(stored.dtype), "projection_weight")
        writer.write(node.name, 2, solution[-1].astype(stored.dtype), "projection_bias")
        target = BLOCK_OUTPUT_TARGET if offset is not None else "conv output"
        self.records.append({"layer": node.name, "positions": int(len(xp)), "target": target,
                             "residual_before": before, "residual_after": after, "damp": self.damp})
