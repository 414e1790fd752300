"""Fine-tune a pruned ONNX model by distillation, masks fixed: the library call behind ``deprune-onnx finetune``.

Steps: choose the masks (the given plan, or the student's zero pattern checked and aligned like
``prune --keep-zeros``) -> apply them to the student -> convert student and teacher to PyTorch (each checked
against ONNX Runtime) -> measure KL to the teacher -> distil -> measure again -> write the trained values back
into the student's own graph -> re-apply the plan (pruned weights exactly +0). Removed PW channels stay removed
because shapes never change: the student already lacks them and only values are trained.

Either model may hold deprune's custom op (lowered to Conv first) or be float16 (``prune --dtype float16``):
training runs on an exact float32 copy, and a float16 student is written back as float16.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from deprune_onnx.analysis import analyze
from deprune_onnx.dw.apply import apply_dw_masks
from deprune_onnx.dw.planner import DWOptions
from deprune_onnx.errors import CheckFailed, DepruneError
from deprune_onnx.evaluation.images import TrainingImages
from deprune_onnx.finetune.convert import to_torch, write_back
from deprune_onnx.evaluation.output_kind import CLASS_SCORES, DENSE, SEQUENCE, output_kind as shape_kind
from deprune_onnx.finetune.distill import DistillOptions, check_informative, distill, mean_kl, predict
from deprune_onnx.finetune.fixed_masks import FixedMasks
from deprune_onnx.evaluation.runner import lower_custom_ops
from deprune_onnx.onnx_io.float16 import convert_to_float16, convert_to_float32, is_float16
from deprune_onnx.onnx_io.graph import ensure_unique_node_names
from deprune_onnx.pipeline import PruneOptions, make_keep_zeros_plan
from deprune_onnx.plan import PruningPlan


@dataclass
class FinetuneResult:
    model: onnx.ModelProto
    plan: PruningPlan
    losses: list[float]
    kl_before: dict[str, float]
    kl_after: dict[str, float]
    output_kind: str
    labels_used: bool
    micro_batch: int | None
    masked_parameters: list[str]
    frozen: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``OUT.finetune.json`` record (everything but the model and the plan)."""
        data = asdict(self)
        del data["model"], data["plan"]
        return data


def input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """The [N, C, H, W] of the first graph input, batch taken as 1; a DepruneError if H or W is unknown."""
    initializers = {t.name for t in model.graph.initializer}
    value = next(v for v in model.graph.input if v.name not in initializers)
    dims = value.type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims)
    if len(shape) != 4 or not all(shape[1:]):
        raise DepruneError(f"input '{value.name}' has shape {list(shape)}: fine-tuning needs a static "
                           "[N, C, H, W] image input")
    return (1, *shape[1:])


def output_kind(model: onnx.ModelProto, shape: Sequence[int]) -> str:
    """How the first output is distilled (``deprune_onnx.finetune.distill``), from the op producing it and its
    ``shape`` [N, ...]: logits | probabilities | log_probabilities (class scores, or a map's classes per pixel),
    sequence:<one of those> ([N, T, C]), sigmoid (probabilities per element), map (one channel of raw values)."""
    name = model.graph.output[0].name
    producer = next((n for n in model.graph.node if name in n.output), None)
    op = producer.op_type if producer is not None else ""
    activation = {"Softmax": "probabilities", "LogSoftmax": "log_probabilities", "Sigmoid": "sigmoid"}.get(
        op, "logits")
    kind = shape_kind(shape)
    if activation == "sigmoid":
        return activation
    if kind == SEQUENCE:
        return f"sequence:{activation}"
    if kind == DENSE and activation == "logits" and (len(shape) < 2 or shape[1] == 1):
        return "map"
    return activation


def resolve_plan(student: onnx.ModelProto, plan: PruningPlan | None, method: str, tile: int) -> PruningPlan:
    """The plan whose masks stay fixed: ``plan``, or the student's zero pattern (checked, aligned for bh)."""
    if plan is not None:
        return plan
    options = PruneOptions(dw=DWOptions(method=method, tile=tile), keep_zeros=True)
    return make_keep_zeros_plan(student, options, analyze(student))


def _labels_usable(images: TrainingImages, classes: int) -> bool:
    return all(label is not None and 0 <= label < classes for label in images.labels)


def finetune_model(student: onnx.ModelProto, teacher: onnx.ModelProto, images: TrainingImages, options: DistillOptions,
                   plan: PruningPlan | None = None, method: str = "bh", tile: int = 32,
                   eval_sets: dict[str, np.ndarray] | None = None,
                   on_step: Callable[[int, float], None] | None = None) -> FinetuneResult:
    """Distil ``teacher`` into ``student`` (modified in place, masks applied, unless it is float16 or holds the
    custom op: then a float32 / lowered copy is trained) and return the fine-tuned model.

    ``eval_sets`` maps a name to views [N, C, H, W] on which the KL to the teacher is measured before and after
    (default: the training images' centre views and their flipped corner crops).
    """
    half = is_float16(student)
    student, teacher = lower_custom_ops(student, "model"), lower_custom_ops(teacher, "--teacher")
    student = convert_to_float32(student) if half else student
    teacher = convert_to_float32(teacher) if is_float16(teacher) else teacher
    ensure_unique_node_names(student)
    shape = input_shape(student)
    if input_shape(teacher) != shape:
        raise DepruneError(f"--teacher: input shape {list(input_shape(teacher))} differs from the model's "
                           f"{list(shape)}")
    plan = resolve_plan(student, plan, method, tile)
    apply_dw_masks(student, plan.dw_layers, in_place=True)
    torch_student = to_torch(student, "model", shape)
    torch_teacher = to_torch(teacher, "--teacher", shape)
    torch_student.module.to(options.device)
    torch_teacher.module.to(options.device)
    for parameter in torch_teacher.module.parameters():
        parameter.requires_grad_(False)
    probe = images.centre_views()[:2]
    raw = list(predict(torch_teacher, probe, "map", options.device).shape)
    student_raw = list(predict(torch_student, probe, "map", options.device).shape)
    if raw != student_raw:
        per_image = [" x ".join(map(str, dims[1:])) for dims in (raw, student_raw)]
        raise DepruneError(f"--teacher: {per_image[0]} outputs per image, the model has {per_image[1]}")
    kind = output_kind(student, raw)
    check_informative(predict(torch_teacher, probe, kind, options.device), kind, options.temperature, raw)
    classes = raw[1] if shape_kind(raw) == CLASS_SCORES and len(raw) == 2 else 0
    masks = FixedMasks.from_plan(torch_student, student, plan)
    sets = eval_sets if eval_sets is not None else {"train_centre": images.centre_views(),
                                                     "train_corner_flips": images.corner_flip_views()}
    before = {name: mean_kl(torch_student, torch_teacher, views, kind, options.device)
              for name, views in sets.items()}
    use_labels = classes > 0 and _labels_usable(images, classes) and options.label_weight > 0
    losses = distill(torch_student, torch_teacher, images, masks, kind, use_labels, options, on_step)
    broken = masks.violations()
    if broken:
        raise CheckFailed(f"pruned weights moved during training: {broken}")
    after = {name: mean_kl(torch_student, torch_teacher, views, kind, options.device)
             for name, views in sets.items()}
    tuned, _ = apply_dw_masks(write_back(student, torch_student), plan.dw_layers, in_place=True)
    tuned = convert_to_float16(tuned)[0] if half else tuned
    return FinetuneResult(
        model=tuned, plan=plan, losses=losses, kl_before=before, kl_after=after, output_kind=kind,
        labels_used=use_labels, micro_batch=torch_student.micro_batch, masked_parameters=masks.parameters,
        frozen=torch_student.frozen, options=asdict(options))

