"""Keep pruned weights at exactly zero while training: masked gradients plus re-masking after every step.

Why both: a gradient hook alone keeps plain SGD on the mask, but weight decay, Adam's epsilon, or any code that
writes parameters directly can still move a pruned weight; re-masking after ``optimizer.step()`` makes the
zeros exact whatever the optimizer does. ``masked_fill_`` writes +0.0 (never -0.0), like ``apply.masked_weight``.
"""
from __future__ import annotations

import onnx
import torch

from deprune_onnx.errors import DepruneError
from deprune_onnx.finetune.convert import TorchModel
from deprune_onnx.plan import PruningPlan


class FixedMasks:
    """Boolean keep masks (True = trainable weight) for some parameters of one module."""

    def __init__(self, module: torch.nn.Module, keep: dict[str, torch.Tensor]) -> None:
        parameters = dict(module.named_parameters())
        self._pairs: list[tuple[str, torch.nn.Parameter, torch.Tensor]] = []
        for name, mask in keep.items():
            parameter = parameters[name]
            if tuple(mask.shape) != tuple(parameter.shape):
                raise DepruneError(f"mask of '{name}' has shape {list(mask.shape)}, the parameter "
                                   f"{list(parameter.shape)}")
            self._pairs.append((name, parameter, mask.to(device=parameter.device, dtype=torch.bool)))
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @classmethod
    def from_plan(cls, torch_model: TorchModel, model: onnx.ModelProto, plan: PruningPlan) -> "FixedMasks":
        """The plan's DW masks on the converted parameters of those layers (frozen layers need none)."""
        weight_of = {node.name: node.input[1] for node in model.graph.node if len(node.input) > 1}
        keep: dict[str, torch.Tensor] = {}
        for layer in plan.dw_layers:
            mask = layer.keep_mask()
            if layer.method == "none" or mask.all():
                continue
            if layer.name not in weight_of:
                raise DepruneError(f"plan layer '{layer.name}': no such node in the model")
            binding = torch_model.binding_for(layer.name, weight_of[layer.name])
            if binding is not None:
                keep[binding.parameter] = torch.from_numpy(mask)
        return cls(torch_model.module, keep)

    @property
    def parameters(self) -> list[str]:
        return [name for name, _, _ in self._pairs]

    def attach(self) -> "FixedMasks":
        """Zero the gradient of every pruned weight as it is computed."""
        for _, parameter, mask in self._pairs:
            self._hooks.append(parameter.register_hook(lambda grad, mask=mask: grad * mask))
        return self

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @torch.no_grad()
    def enforce(self) -> None:
        """Set every pruned weight to +0.0 (call after each optimizer step)."""
        for _, parameter, mask in self._pairs:
            parameter.masked_fill_(~mask, 0.0)

    @torch.no_grad()
    def violations(self) -> dict[str, int]:
        """Parameter name -> number of pruned weights that are not exactly zero (empty when all hold)."""
        found = {name: int(torch.count_nonzero(parameter[~mask])) for name, parameter, mask in self._pairs}
        return {name: count for name, count in found.items() if count}
