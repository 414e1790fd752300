"""Fine-tune a pruned ONNX model by distillation, masks fixed: the library call behind ``deprune-onnx finetune``.

Steps: the fixed masks (``structure.resolve_masks``: a plan, or the zero pattern as it is) -> applied to the
student (a no-op unless re-alignment was asked for) -> student and teacher converted to PyTorch (each checked
against ONNX Runtime) -> ``train.Trainer`` (epochs, validation, checkpoints, the best epoch kept) -> the trained
values written back into the student's own graph -> the plan re-applied (pruned weights exactly +0) -> checked
against the pruned input (``structure.structure_changes``). Removed PW channels stay removed because shapes
never change: the student already lacks them and only values are trained.

Either model may hold deprune's custom op (lowered to Conv first) or be float16 (``prune --dtype float16``):
training runs on an exact float32 copy, and a float16 student is written back as float16.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from deprune_onnx.dw.apply import apply_dw_masks
from deprune_onnx.errors import CheckFailed, DepruneError
from deprune_onnx.evaluation.images import Preset, preprocess
from deprune_onnx.evaluation.output_kind import CLASS_SCORES, DENSE, SEQUENCE, output_kind as shape_kind
from deprune_onnx.evaluation.runner import lower_custom_ops
from deprune_onnx.finetune.convert import to_torch, write_back
from deprune_onnx.finetune.data import ImageList, PresetImages
from deprune_onnx.finetune.distill import check_informative, predict
from deprune_onnx.finetune.distributed import Processes
from deprune_onnx.finetune.fixed_masks import FixedMasks
from deprune_onnx.finetune.structure import (MaskSource, check_student_is_pruned, resolve_masks,
                                              structure_changes)
from deprune_onnx.finetune.train import Trainer, TrainOptions, TrainResult
from deprune_onnx.onnx_io.float16 import convert_to_float16, convert_to_float32, is_float16
from deprune_onnx.onnx_io.graph import ensure_unique_node_names
from deprune_onnx.plan import PruningPlan


@dataclass
class FinetuneResult:
    model: onnx.ModelProto
    plan: PruningPlan
    training: TrainResult
    masks: MaskSource
    output_kind: str
    labels_used: bool
    micro_batch: int | None
    masked_parameters: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    frozen: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``OUT.finetune.json`` record (everything but the model and the plan)."""
        training = asdict(self.training)
        return {"best_epoch": self.training.best_epoch, "selected_by": self.training.selected_by,
                "best": self.training.history[self.training.best_epoch], "history": training.pop("history"),
                "training": training, "masks": self.masks.to_dict(), "output_kind": self.output_kind,
                "labels_used": self.labels_used, "micro_batch": self.micro_batch,
                "masked_parameters": self.masked_parameters, "data": self.data, "frozen": self.frozen,
                "structure_check": "passed: same nodes and initializer shapes as the pruned input, every pruned "
                                   "DW weight +0.0 (after training and after write-back)"}


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


def fingerprint(student: onnx.ModelProto, teacher: onnx.ModelProto, train: ImageList, val: ImageList,
                options: TrainOptions, plan: PruningPlan, preset: Preset) -> dict[str, str]:
    """What a checkpoint must have been trained on to be resumed, one digest per part so that a refused
    --resume can say which part changed: the models, the image lists, the preprocessing, the masks, the
    options (the number of epochs and the device may change on resume)."""
    def digest(*parts: bytes) -> str:
        hashed = hashlib.sha256()
        for part in parts:
            hashed.update(part)
        return hashed.hexdigest()

    def as_json(value: Any) -> bytes:
        return json.dumps(value, sort_keys=True, default=str).encode()

    settings = {k: v for k, v in asdict(options).items() if k not in ("epochs", "device", "workers")}
    images = [[[str(path), label] for path, label in zip(i.paths, i.labels)] for i in (train, val)]
    return {"models (PRUNED.onnx, --teacher)": digest(*(m.SerializeToString(deterministic=True)
                                                         for m in (student, teacher))),
            "images (--images, --val-images)": digest(as_json(images)),
            "preprocessing": digest(as_json(preset.describe())),
            "masks": digest(as_json(plan.to_dict())),
            "training options": digest(as_json(settings))}


def finetune_model(student: onnx.ModelProto, teacher: onnx.ModelProto, train: ImageList, val: ImageList,
                   preset: Preset, options: TrainOptions, processes: Processes, plan: PruningPlan | None = None,
                   plan_source: str | None = None, realign: str | None = None, tile: int = 32,
                   checkpoints: Path | None = None, resume: bool = False,
                   log: Callable[[str], None] = lambda _: None,
                   names: tuple[str, str] = ("model", "--teacher")) -> FinetuneResult:
    """Distil ``teacher`` into ``student`` and return the best epoch's model. The fixed masks are
    ``structure.resolve_masks(student, plan, plan_source, realign, tile)``, taken after custom ops are lowered;
    ``log`` receives the mask source, any re-alignment change and one line per epoch; ``names`` name the student
    and the teacher in errors (the CLI passes their files)."""
    student_name, teacher_name = names
    half = is_float16(student)
    student, teacher = lower_custom_ops(student, student_name), lower_custom_ops(teacher, teacher_name)
    student = convert_to_float32(student) if half else student
    teacher = convert_to_float32(teacher) if is_float16(teacher) else teacher
    ensure_unique_node_names(student)
    pruned = onnx.ModelProto()
    pruned.CopyFrom(student)
    shape = input_shape(student)
    if input_shape(teacher) != shape:
        raise DepruneError(f"{teacher_name}: input shape {list(input_shape(teacher))} differs from {student_name}'s "
                           f"{list(shape)}")
    masks = resolve_masks(student, plan, plan_source, realign, tile)
    plan = masks.plan
    check_student_is_pruned(student, teacher, plan, student_name, teacher_name)
    apply_dw_masks(student, plan.dw_layers, in_place=True)
    torch_student = to_torch(student, student_name, shape)
    torch_teacher = to_torch(teacher, teacher_name, shape)
    torch_student.module.to(processes.device)
    torch_teacher.module.to(processes.device)
    for parameter in torch_teacher.module.parameters():
        parameter.requires_grad_(False)
    probe = np.concatenate([preprocess(path, preset, 1) for path in train.paths[:2]])
    device = str(processes.device)
    raw = list(predict(torch_teacher, probe, "map", device).shape)
    student_raw = list(predict(torch_student, probe, "map", device).shape)
    if raw != student_raw:
        per_image = [" x ".join(map(str, dims[1:])) for dims in (raw, student_raw)]
        raise DepruneError(f"{teacher_name}: {per_image[0]} outputs per image, {student_name} has {per_image[1]}")
    kind = output_kind(student, raw)
    check_informative(predict(torch_teacher, probe, kind, device), kind, options.temperature, raw)
    classes = raw[1] if shape_kind(raw) == CLASS_SCORES and len(raw) == 2 else 0
    log(f"masks: {masks.source}" + (f"; {len(masks.changed)} layer(s) changed" if realign else " (unchanged)"))
    for layer, change in masks.changed.items():
        log(f"  {layer}: {change['newly_pruned']} weight(s) newly pruned, {change['restored_zero_taps']} "
            "zero-valued tap(s) restored")
    log(f"data: {len(train.paths)} training, {len(val.paths)} validation image(s); {processes.world} "
        "process(es)")
    fixed = FixedMasks.from_plan(torch_student, student, plan)
    use_labels = classes > 0 and train.labelled(classes) and options.label_weight > 0
    labels_not_used = None if use_labels else (
        "the output is not class scores [N, K]" if classes == 0 else "--label-weight 0"
        if options.label_weight <= 0 else f"training images: {train.label_problem(classes)}")
    if labels_not_used:
        log(f"labels: not used ({labels_not_used}); distillation only")  # before training, not after it
    trainer = Trainer(torch_student, torch_teacher, fixed, kind, use_labels,
                      PresetImages(train, preset, augment=True, min_scale=options.min_scale, seed=options.seed),
                      PresetImages(val, preset, augment=False), options, processes, checkpoints,
                      fingerprint(pruned, teacher, train, val, options, plan, preset), log)
    result = trainer.run(resume, options.select)
    broken = fixed.violations()
    if broken:
        raise CheckFailed(f"pruned weights are not zero after training: {broken}")
    tuned, _ = apply_dw_masks(write_back(student, torch_student), plan.dw_layers, in_place=True)
    problems = structure_changes(pruned, tuned, plan)
    if problems:
        raise CheckFailed("the fine-tuned model differs from the pruned input beyond kept weight values: "
                          + "; ".join(problems))
    tuned = convert_to_float16(tuned)[0] if half else tuned
    data = {"train_images": len(train.paths), "val_images": len(val.paths), "classes": classes,
            "val_labelled": classes > 0 and val.labelled(classes), "preset": preset.describe()}
    if labels_not_used:
        data["labels_not_used_because"] = labels_not_used
    return FinetuneResult(model=tuned, plan=plan, training=result, masks=masks, output_kind=kind,
                          labels_used=use_labels, micro_batch=torch_student.micro_batch,
                          masked_parameters=fixed.parameters, data=data, frozen=torch_student.frozen)
