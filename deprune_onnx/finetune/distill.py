"""Knowledge distillation from the unpruned teacher: the loss and the forward passes it needs.

Loss (Hinton et al.): T^2 * KL(softmax(teacher / T) || softmax(student / T)), plus, when every image has a
label the model can output, ``label_weight`` * cross-entropy on the labels, mixed as
(1 - label_weight) * KL + label_weight * CE. Models whose output is already a Softmax (the Paddle classifiers)
are handled through log-probabilities: log p = logits - logsumexp(logits), so the tempered softmax of log p is
the tempered softmax of the logits. The training loop that uses it is ``deprune_onnx.finetune.train``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from deprune_onnx.finetune.convert import TorchModel


def log_probabilities(output: torch.Tensor, kind: str) -> torch.Tensor:
    """Log class probabilities from a model output of ``kind`` logits | probabilities | log_probabilities."""
    if kind == "probabilities":
        return torch.log(output.clamp_min(1e-12))
    if kind == "log_probabilities":
        return output
    return F.log_softmax(output, dim=1)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float, label_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, KL at temperature T) from student and teacher log-probabilities [N, classes]."""
    student_t = F.log_softmax(student / temperature, dim=1)
    teacher_t = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(student_t, teacher_t, log_target=True, reduction="batchmean") * temperature ** 2
    if labels is None or label_weight == 0.0:
        return kl, kl
    cross_entropy = F.nll_loss(F.log_softmax(student, dim=1), labels)
    return (1.0 - label_weight) * kl + label_weight * cross_entropy, kl


def forward(module: torch.nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Log-probabilities of the first output of ``module`` (a converted model, or its DDP wrapper) on ``x``."""
    out = module(x)
    return log_probabilities(out[0] if isinstance(out, (list, tuple)) else out, kind)


def chunks(count: int, micro_batch: int | None) -> list[slice]:
    """Slices of ``count`` samples, ``micro_batch`` at a time (all at once when None: any batch runs)."""
    step = micro_batch or count
    return [slice(start, min(start + step, count)) for start in range(0, count, step)]


@torch.no_grad()
def predict(model: TorchModel, views: np.ndarray, kind: str, device: str) -> torch.Tensor:
    """Log-probabilities of ``views`` [N, C, H, W], in micro-batches where the graph needs them."""
    x = torch.from_numpy(views).to(device)
    return torch.cat([forward(model.module, x[part], kind) for part in chunks(len(x), model.micro_batch or 32)])
