"""Knowledge distillation from the unpruned teacher, with the student's masks fixed.

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
The teacher runs under ``no_grad`` on the same views; the student trains in
eval mode (BatchNorm statistics fixed: a few images cannot re-estimate them), at a constant learning rate.

DECISION: Adam (lr 1e-4) is the default optimizer. A one-shot pruned model starts far from its teacher (KL ~13
on MobileNetV2 at DW PR 0.5) and its first gradients are large: SGD at the paper's lr 1e-3 overshoots in the
first few dozen steps (KL rose to ~20 on the sample images), while Adam's per-weight step size brings the KL down
from the first steps. SGD with momentum 0.9 (the paper's 65-epoch recipe) stays available.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from deprune_onnx.errors import DepruneError
from deprune_onnx.evaluation.images import TrainingImages
from deprune_onnx.finetune.convert import TorchModel
from deprune_onnx.finetune.fixed_masks import FixedMasks


OPTIMIZERS = ("adam", "sgd")
DEFAULT_LR = {"adam": 1e-4, "sgd": 1e-3}


@dataclass
class DistillOptions:
    steps: int = 200
    batch: int = 16
    optimizer: str = "adam"
    lr: float | None = None     # None: DEFAULT_LR of the optimizer
    momentum: float = 0.9       # sgd only
    temperature: float = 2.0
    label_weight: float = 0.5   # used only when labels are usable
    seed: int = 0
    device: str = "cpu"


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


def _forward(model: TorchModel, x: torch.Tensor, kind: str) -> torch.Tensor:
    out = model.module(x)
    return log_probabilities(out[0] if isinstance(out, (list, tuple)) else out, kind)


def _chunks(count: int, micro_batch: int | None) -> list[slice]:
    step = micro_batch or count
    return [slice(start, min(start + step, count)) for start in range(0, count, step)]


@torch.no_grad()
def predict(model: TorchModel, views: np.ndarray, kind: str, device: str) -> torch.Tensor:
    """Log-probabilities of ``views`` [N, C, H, W], in micro-batches where the graph needs them."""
    x = torch.from_numpy(views).to(device)
    return torch.cat([_forward(model, x[part], kind) for part in _chunks(len(x), model.micro_batch or 32)])


def mean_kl(student: TorchModel, teacher: TorchModel, views: np.ndarray, kind: str, device: str) -> float:
    """KL(teacher || student) at temperature 1 (for a "map": the mean squared error), averaged over ``views`` and
    every position of the output: the distance distillation reduces."""
    s, t = predict(student, views, kind, device), predict(teacher, views, kind, device)
    return float(distillation_loss(s, t, None, 1.0, 0.0, kind)[1])


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


def make_optimizer(parameters: list[torch.nn.Parameter], options: DistillOptions) -> torch.optim.Optimizer:
    lr = options.lr if options.lr is not None else DEFAULT_LR[options.optimizer]
    if options.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=options.momentum)
    return torch.optim.Adam(parameters, lr=lr)


def distill(student: TorchModel, teacher: TorchModel, images: TrainingImages, masks: FixedMasks, kind: str,
            use_labels: bool, options: DistillOptions,
            on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``student`` for ``options.steps`` steps; returns the loss of every step."""
    rng = np.random.default_rng(options.seed)
    torch.manual_seed(options.seed)
    trainable = [p for p in student.module.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, options)
    masks.attach()
    masks.enforce()
    losses: list[float] = []
    try:
        for step in range(options.steps):
            views, labels = images.random_views(rng, options.batch)
            x = torch.from_numpy(views).to(options.device)
            y = torch.from_numpy(labels).to(options.device) if use_labels else None
            target = predict(teacher, views, kind, options.device)
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for part in _chunks(len(x), student.micro_batch):
                share = (part.stop - part.start) / len(x)
                loss, _ = distillation_loss(_forward(student, x[part], kind), target[part],
                                            None if y is None else y[part], options.temperature,
                                            options.label_weight, kind)
                (loss * share).backward()
                total += loss.item() * share
            optimizer.step()
            masks.enforce()
            losses.append(total)
            if on_step is not None:
                on_step(step, total)
    finally:
        masks.detach()
    return losses
