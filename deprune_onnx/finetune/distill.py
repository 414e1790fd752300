"""Knowledge distillation from the unpruned teacher: the loss and the forward passes it needs.

Loss (Hinton et al.): T^2 * KL(softmax(teacher / T) || softmax(student / T)), plus, when every image has a
label the model can output, ``label_weight`` * cross-entropy on the labels, mixed as
(1 - label_weight) * KL + label_weight * CE. Models whose output is already a Softmax (the Paddle classifiers)
are handled through log-probabilities: log p = logits - logsumexp(logits), so the tempered softmax of log p is
the tempered softmax of the logits.

Outputs that are not class scores (``output_kind`` in run.py) are brought to the same form, log-probabilities
with the class axis at dim 1, so one KL serves them all, averaged over every position (sample, step, pixel):
sequences [N, T, C] (softmax over C per step); maps [N, C, H, W] with C > 1 (per-pixel softmax over C); Sigmoid
outputs (a detector's probability map) as two classes per element, [log(1 - p), log p] (per-pixel binary KL).
A map of raw values with one channel has no classes: its loss is the mean squared error ("map"). A loss that is
zero whatever the student outputs is refused (``check_informative``): it would train nothing and report success.
The training loop that uses the loss is ``deprune_onnx.finetune.train``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from deprune_onnx.errors import DepruneError
from deprune_onnx.finetune.convert import TorchModel


def log_probabilities(output: torch.Tensor, kind: str) -> torch.Tensor:
    """Log class probabilities, class axis at dim 1, from a model output of ``kind`` logits | probabilities |
    log_probabilities | sequence:<one of those> | sigmoid; a "map" output comes back as it is."""
    if kind.startswith("sequence:"):
        return log_probabilities(output.movedim(-1, 1), kind.split(":", 1)[1])
    if kind == "sigmoid":
        p = output.clamp(1e-7, 1.0 - 1e-7)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)
    if kind == "map":
        return output
    if kind == "probabilities":
        return torch.log(output.clamp_min(1e-12))
    if kind == "log_probabilities":
        return output
    return F.log_softmax(output, dim=1)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float, label_weight: float, kind: str = "logits"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, distance) from student and teacher ``log_probabilities`` [N, classes, ...]: the KL at temperature T
    averaged over every position (for [N, classes]: over samples), or for a "map" the mean squared error."""
    if kind == "map":
        mse = F.mse_loss(student, teacher)
        return mse, mse
    student_t = F.log_softmax(student / temperature, dim=1)
    teacher_t = F.log_softmax(teacher / temperature, dim=1)
    positions = teacher_t.numel() // max(1, teacher_t.shape[1])
    kl = F.kl_div(student_t, teacher_t, log_target=True, reduction="sum") / positions * temperature ** 2
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


def check_informative(teacher: torch.Tensor, kind: str, temperature: float, shape: list[int]) -> None:
    """Refuse a distillation loss that is zero whatever the student outputs (a softmax over one channel, say):
    the loss between the teacher's ``log_probabilities`` and a perturbed copy must be positive."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn(teacher.shape, generator=generator).to(teacher.device)
    perturbed = teacher + 0.5 * noise * teacher.abs().mean().clamp_min(1.0)
    loss, _ = distillation_loss(perturbed, teacher, None, temperature, 0.0, kind)
    if not float(loss) > 0.0:
        raise DepruneError(f"the distillation loss of this output ([N, {', '.join(map(str, shape[1:]))}], "
                           f"{kind}) is zero whatever the model outputs: fine-tuning would change nothing "
                           "(a softmax over an axis of size 1?)")
