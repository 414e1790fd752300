"""Fine-tune a pruned ONNX model by distillation, masks fixed: the library call behind ``deprune-onnx finetune``.

Steps: the fixed masks (``structure.resolve_masks``: a plan, or the zero pattern as it is) -> applied to the
student (a no-op unless re-alignment was asked for) -> student and teacher converted to PyTorch (each checked
against ONNX Runtime) -> ``train.Trainer`` (epochs, validation, checkpoints, the best epoch kept) -> the trained
values written back into the student's own graph -> the plan re-applied (pruned weights exactly +0) -> checked
against the pruned input (``structure.structure_changes``). Removed PW channels stay removed because shapes
never change: the student already lacks them and only values are trained.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx

from deprune_onnx.dw.apply import apply_dw_masks
from deprune_onnx.errors import CheckFailed, DepruneError
from deprune_onnx.evaluation.images import Preset, preprocess
from deprune_onnx.finetune.convert import to_torch, write_back
from deprune_onnx.finetune.data import ImageList, PresetImages
from deprune_onnx.finetune.distill import predict
from deprune_onnx.finetune.distributed import Processes
from deprune_onnx.finetune.fixed_masks import FixedMasks
from deprune_onnx.finetune.structure import MaskSource, structure_changes
from deprune_onnx.finetune.train import Trainer, TrainOptions, TrainResult
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


def output_kind(model: onnx.ModelProto) -> str:
    """logits | probabilities | log_probabilities, from the op producing the first graph output."""
    name = model.graph.output[0].name
    producer = next((n for n in model.graph.node if name in n.output), None)
    if producer is not None and producer.op_type == "Softmax":
        return "probabilities"
    if producer is not None and producer.op_type == "LogSoftmax":
        return "log_probabilities"
    return "logits"


def fingerprint(student: onnx.ModelProto, teacher: onnx.ModelProto, train: ImageList, val: ImageList,
                options: TrainOptions, plan: PruningPlan) -> str:
    """What a checkpoint must have been trained on to be resumed: models, data lists, masks, options (the
    number of epochs and the device may change on resume)."""
    digest = hashlib.sha256()
    for model in (student, teacher):
        digest.update(model.SerializeToString(deterministic=True))
    for images in (train, val):
        digest.update(json.dumps([[str(p), l] for p, l in zip(images.paths, images.labels)]).encode())
    settings = {k: v for k, v in asdict(options).items() if k not in ("epochs", "device", "workers")}
    digest.update(json.dumps([settings, plan.to_dict()], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def finetune_model(student: onnx.ModelProto, teacher: onnx.ModelProto, train: ImageList, val: ImageList,
                   preset: Preset, options: TrainOptions, masks: MaskSource, processes: Processes,
                   checkpoints: Path | None = None, resume: bool = False,
                   log: Callable[[str], None] = lambda _: None) -> FinetuneResult:
    """Distil ``teacher`` into ``student`` (modified in place: masks applied) and return the best epoch's model."""
    ensure_unique_node_names(student)
    pruned = onnx.ModelProto()
    pruned.CopyFrom(student)
    shape = input_shape(student)
    if input_shape(teacher) != shape:
        raise DepruneError(f"--teacher: input shape {list(input_shape(teacher))} differs from the model's "
                           f"{list(shape)}")
    plan = masks.plan
    apply_dw_masks(student, plan.dw_layers)
    kind = output_kind(student)
    torch_student = to_torch(student, "model", shape)
    torch_teacher = to_torch(teacher, "--teacher", shape)
    torch_student.module.to(processes.device)
    torch_teacher.module.to(processes.device)
    for parameter in torch_teacher.module.parameters():
        parameter.requires_grad_(False)
    probe = preprocess(train.paths[0], preset, 1)
    classes = int(predict(torch_teacher, probe, kind, str(processes.device)).shape[1])
    student_classes = int(predict(torch_student, probe, kind, str(processes.device)).shape[1])
    if classes != student_classes:
        raise DepruneError(f"--teacher: {classes} outputs per image, the model has {student_classes}")
    fixed = FixedMasks.from_plan(torch_student, student, plan)
    use_labels = train.labelled(classes) and options.label_weight > 0
    trainer = Trainer(torch_student, torch_teacher, fixed, kind, use_labels,
                      PresetImages(train, preset, augment=True, min_scale=options.min_scale, seed=options.seed),
                      PresetImages(val, preset, augment=False), options, processes, checkpoints,
                      fingerprint(pruned, teacher, train, val, options, plan), log)
    result = trainer.run(resume, options.select)
    broken = fixed.violations()
    if broken:
        raise CheckFailed(f"pruned weights are not zero after training: {broken}")
    tuned = apply_dw_masks(write_back(student, torch_student), plan.dw_layers)
    problems = structure_changes(pruned, tuned, plan)
    if problems:
        raise CheckFailed("the fine-tuned model differs from the pruned input beyond kept weight values: "
                          + "; ".join(problems))
    data = {"train_images": len(train.paths), "val_images": len(val.paths), "classes": classes,
            "val_labelled": val.labelled(classes), "preset": asdict(preset)}
    return FinetuneResult(model=tuned, plan=plan, training=result, masks=masks, output_kind=kind,
                          labels_used=use_labels, micro_batch=torch_student.micro_batch,
                          masked_parameters=fixed.parameters, data=data, frozen=torch_student.frozen)
