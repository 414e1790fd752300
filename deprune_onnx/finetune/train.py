"""The fine-tuning loop: epochs over streamed data, a learning-rate schedule, validation, checkpoints, DDP.

Per epoch: every process trains on its 1/N share of each global batch (DistributedSampler with the same seeded
permutation, so one process with batch B and N processes with B/N see the same samples per step, and
DistributedDataParallel averages the gradients), then all processes measure the validation set together (each a
strided share, sums added across processes), rank 0 records the metrics, keeps the best state, and writes
``last.pt`` (and ``best.pt`` when it improved) into the checkpoint folder. ``resume`` continues from ``last.pt``.

Schedules (per optimizer step, as a factor of ``lr``): ``step``, the paper's (x ``step_gamma`` every
``step_epochs`` epochs: 1e-3 -> 1e-4 after 30); ``cosine`` (to 0 at the last step); ``constant``.

DECISION: SGD with momentum 0.9, weight decay 1e-4, lr 1e-3 and the step schedule are the defaults: the paper's
65-epoch recipe, meant for real training sets. Adam (lr 1e-4 by default) is the better choice for short runs on a
few hundred images: a one-shot pruned model starts far from its teacher and SGD at lr 1e-3 overshoots in its
first steps there (KL to the teacher rose from ~13 to ~20 on the 10 sample images at DW PR 0.5).

Mixed precision (``amp``, CUDA only): bfloat16 autocast without a gradient scaler where the GPU supports
bfloat16 natively (``torch.cuda.is_bf16_supported(including_emulation=False)``: Ampere and newer), float16
autocast with a GradScaler only otherwise (``precision_for``). Why: float16 gradients need the scaler, and the
scaler's first steps at scale 2^16 overflow and are skipped (measured on an H200: all 4 steps of a 2-epoch run
skipped, the weights unchanged); bfloat16 has float32's range, so no step is skipped. A skipped step (the
scaler found inf/NaN gradients and lowered its scale) does not advance the schedule; every epoch records its
optimizer steps and skipped steps, and an epoch that skipped every step is a warning in the result
(``extra["warnings"]``).

BatchNorm: when the converted student still has BatchNorm layers (models exported without folding them), they
run in train mode, so their statistics follow the pruned weights, unless ``batchnorm`` is ``frozen`` or the graph
only runs one sample at a time (statistics of single samples are noise). Their running statistics are written
back with the weights. Pruned weights are untouched either way: BatchNorm has no DW weights. Every other layer
stays in eval mode. On CUDA with several processes they become SyncBatchNorm (statistics of the global batch).
"""
from __future__ import annotations

import contextlib
import io
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset

from deprune_onnx.errors import CheckFailed, DepruneError
from deprune_onnx.finetune.convert import TorchModel
from deprune_onnx.finetune.data import UNLABELLED, PresetImages
from deprune_onnx.finetune.distill import chunks, distillation_loss, forward
from deprune_onnx.finetune.distributed import Processes
from deprune_onnx.finetune.fixed_masks import FixedMasks
from deprune_onnx.onnx_io.load_save import write_bytes_atomic
from deprune_onnx.progress import count_progress

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 1e-3, "adam": 1e-4}
SCHEDULES = ("step", "cosine", "constant")
SELECTIONS = ("auto", "loss", "kl", "accuracy", "last")
BATCHNORM_MODES = ("auto", "train", "frozen")
CHECKPOINT_VERSION = 2


@dataclass
class TrainOptions:
    """Everything that decides what training computes (recorded in the report and checked on ``--resume``)."""

    epochs: int = 10
    batch: int = 32                 # global batch per optimizer step: processes x accumulate x loader batch
    accumulate: int = 1             # gradient accumulation: micro-batches per optimizer step
    optimizer: str = "sgd"
    lr: float | None = None         # None: DEFAULT_LR of the optimizer
    momentum: float = 0.9           # sgd only
    weight_decay: float = 1e-4
    schedule: str = "step"
    step_epochs: int = 30
    step_gamma: float = 0.1
    temperature: float = 2.0
    label_weight: float = 0.5       # used only when every training image has a usable label
    batchnorm: str = "auto"
    amp: bool = True                # mixed precision; CUDA only
    workers: int = 2
    min_scale: float = 0.08         # smallest crop area of the random resized crop
    select: str = "auto"            # validation metric that picks the written epoch, or "last"
    seed: int = 0
    device: str = "cpu"

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


@dataclass(frozen=True)
class Precision:
    """How the forward passes run: ``autocast`` dtype (None: float32, no autocast) and whether a GradScaler
    scales the loss (float16 only)."""

    autocast: torch.dtype | None
    scaler: bool

    @property
    def name(self) -> str:
        return "float32" if self.autocast is None else str(self.autocast).removeprefix("torch.")


def precision_for(device: torch.device, amp: bool) -> Precision:
    """The mixed precision of ``amp`` on ``device``: none off CUDA; bfloat16 without a scaler where the GPU
    supports it; else float16 with a GradScaler (see the module docstring for why)."""
    if not amp or device.type != "cuda":
        return Precision(None, False)
    # the current device (distributed.start sets it); emulated bfloat16 (before Ampere) would be slow
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


@dataclass
class TrainResult:
    """Per-epoch metrics (epoch 0 = the pruned model before training) and the chosen epoch."""

    history: list[dict[str, Any]]
    best_epoch: int
    selected_by: str
    batchnorm_train: bool
    resumed_from: int | None = None
    steps_per_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def lr_factor(options: TrainOptions, step: int, steps_per_epoch: int) -> float:
    """The schedule's factor of ``lr`` at optimizer step ``step`` (0-based)."""
    if options.schedule == "step":
        return options.step_gamma ** ((step // max(1, steps_per_epoch)) // options.step_epochs)
    if options.schedule == "cosine":
        total = max(1, options.epochs * steps_per_epoch)
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return 1.0


def loader_batch(options: TrainOptions, processes: int) -> int:
    """Samples per loader batch: the global ``batch`` split over processes and accumulation steps (a
    DepruneError unless it splits evenly)."""
    per_step = processes * options.accumulate
    if options.batch % per_step:
        raise DepruneError(f"--batch {options.batch}: must be a multiple of processes x --accumulate "
                           f"({processes} x {options.accumulate})")
    return options.batch // per_step


class WholeSteps(Sampler[int]):
    """The first whole optimizer steps' worth of ``shard``'s indices: a multiple of ``step`` (loader batch x
    --accumulate) samples per epoch, or all of them when there are fewer than one step. Why not the DataLoader's
    drop_last: it drops per micro-batch, so with --accumulate K an epoch ended with a short group of micro-batches
    stepped at full weight, and K changed what an epoch trained on (a new user's trial, issue 15)."""

    def __init__(self, shard: DistributedSampler, step: int) -> None:
        self.shard = shard
        whole = len(shard) - len(shard) % step
        self.count = whole if whole else len(shard)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.shard), self.count)

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        self.shard.set_epoch(epoch)


def selection_metric(select: str, labelled_validation: bool) -> str:
    """The history key that picks the best epoch: ``val_accuracy`` (higher is better) or ``val_loss``/``val_kl``
    (lower is better); ``last`` writes the last epoch whatever the validation says."""
    if select == "last":
        return "last"
    if select == "auto":
        return "val_accuracy" if labelled_validation else "val_loss"
    if select == "accuracy" and not labelled_validation:
        raise DepruneError("--select accuracy: the validation images have no usable labels")
    return f"val_{select}"


def _batchnorm_layers(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _set_training_mode(module: torch.nn.Module, batchnorm_train: bool) -> None:
    module.eval()
    if batchnorm_train:
        for layer in _batchnorm_layers(module):
            layer.train()


def _state_bytes(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


class Trainer:
    """Trains ``student`` towards ``teacher`` with ``masks`` fixed; see the module docstring."""

    def __init__(self, student: TorchModel, teacher: TorchModel, masks: FixedMasks, kind: str, use_labels: bool,
                 train_set: PresetImages, val_set: PresetImages, options: TrainOptions, processes: Processes,
                 checkpoints: Path | None, fingerprint: dict[str, str], log: Callable[[str], None] = lambda _: None) -> None:
        self.student, self.teacher, self.masks, self.kind = student, teacher, masks, kind
        self.use_labels, self.options, self.processes = use_labels, options, processes
        self.train_set, self.val_set = train_set, val_set
        self.checkpoints, self.fingerprint, self.log = checkpoints, fingerprint, log
        self.device = processes.device
        self.loader_batch = loader_batch(options, processes.world)
        has_bn = bool(_batchnorm_layers(student.module))
        self.batchnorm_train = has_bn and (options.batchnorm == "train" or
                                           (options.batchnorm == "auto" and student.micro_batch is None))
        self.precision = precision_for(self.device, options.amp)
        student.module.to(self.device)
        teacher.module.to(self.device).eval()
        network: torch.nn.Module = student.module
        if processes.world > 1:
            if self.batchnorm_train and self.device.type == "cuda":
                network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
            network = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.network = network
        trainable = [p for p in student.module.parameters() if p.requires_grad]
        if options.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                trainable, lr=options.learning_rate, momentum=options.momentum, weight_decay=options.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(trainable, lr=options.learning_rate, weight_decay=options.weight_decay)
        self.sampler = WholeSteps(DistributedSampler(train_set, num_replicas=processes.world, rank=processes.rank,
                                                     shuffle=True, seed=options.seed),
                                  self.loader_batch * options.accumulate)
        self.loader = DataLoader(train_set, batch_size=self.loader_batch, sampler=self.sampler,
                                 num_workers=options.workers, pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = max(1, math.ceil(len(self.loader) / options.accumulate))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(options, step, self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler)
        val_share = list(range(processes.rank, len(val_set), processes.world))
        self.val_loader = DataLoader(Subset(val_set, val_share), batch_size=max(self.loader_batch, 32),
                                     num_workers=options.workers, pin_memory=self.device.type == "cuda")

    # -- one step ---------------------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.precision.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.autocast)

    @torch.no_grad()
    def _teacher(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            parts = [forward(self.teacher.module, x[part], self.kind)
                     for part in chunks(len(x), self.teacher.micro_batch or len(x))]
        return torch.cat(parts).float()

    def _train_batch(self, x: torch.Tensor, labels: torch.Tensor | None, share: float, sync: bool) -> float:
        """Forward and backward of one loader batch; gradients scaled by ``share`` of the optimizer step."""
        target = self._teacher(x)
        total = 0.0
        parts = chunks(len(x), self.student.micro_batch)
        for index, part in enumerate(parts):
            last = sync and index == len(parts) - 1
            context = (self.network.no_sync() if isinstance(self.network, torch.nn.parallel.DistributedDataParallel)
                       and not last else contextlib.nullcontext())
            with context:
                with self._autocast():
                    output = forward(self.network, x[part], self.kind).float()
                loss, _ = distillation_loss(output, target[part], None if labels is None else labels[part],
                                            self.options.temperature, self.options.label_weight, self.kind)
                piece = (part.stop - part.start) / len(x)
                self.scaler.scale(loss * piece * share).backward()
            total += loss.item() * piece
        return total

    def _optimizer_step(self) -> bool:
        """Step the optimizer through the scaler; True when it really stepped (a float16 scaler skips the step
        when the gradients hold inf/NaN, and then lowers its scale). Only real steps advance the schedule."""
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        stepped = not self.scaler.is_enabled() or self.scaler.get_scale() >= scale
        if stepped:
            self.scheduler.step()
        return stepped

    def _train_epoch(self, epoch: int) -> tuple[float, int, int]:
        """One pass over the training data: (mean training loss over all processes, optimizer steps, skipped
        steps)."""
        self.train_set.epoch = epoch
        self.sampler.set_epoch(epoch)
        _set_training_mode(self.student.module, self.batchnorm_train)
        batches = len(self.loader)
        losses: list[float] = []
        steps = skipped = 0
        self.optimizer.zero_grad(set_to_none=True)
        with count_progress(batches, f"epoch {epoch}/{self.options.epochs}", unit="batch") as advance:
            for index, (x, y) in enumerate(self.loader):
                group_start = index - index % self.options.accumulate
                group = min(self.options.accumulate, batches - group_start)
                step_now = index - group_start == group - 1
                x = x.to(self.device, non_blocking=True)
                labels = y.to(self.device) if self.use_labels else None
                losses.append(self._train_batch(x, labels, 1.0 / group, sync=step_now))
                if step_now:
                    steps += 1
                    skipped += not self._optimizer_step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.masks.enforce()
                if self.processes.main:
                    advance(1)
        loss = self.processes.sum([sum(losses), float(len(losses))])
        return loss[0] / max(1.0, loss[1]), steps, skipped

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss (the training objective on the standard views), KL to the teacher at T = 1 (mean per
        position; the mean squared error for a "map" output), and top-1 accuracy of student and teacher where
        the output is class scores [N, K] and the validation images carry usable labels."""
        self.student.module.eval()
        sums = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # loss, kl, samples, correct, teacher correct, labelled
        for x, y in self.val_loader:
            x, y = x.to(self.device), y.to(self.device)
            target = self._teacher(x)
            with self._autocast():
                output = torch.cat([forward(self.student.module, x[part], self.kind)
                                    for part in chunks(len(x), self.student.micro_batch)]).float()
            labelled = y != UNLABELLED
            use = y if self.use_labels and bool(labelled.all()) and output.ndim == 2 else None
            loss, _ = distillation_loss(output, target, use, self.options.temperature, self.options.label_weight,
                                        self.kind)
            _, distance = distillation_loss(output, target, None, 1.0, 0.0, self.kind)  # KL at T = 1 (MSE: map)
            sums[0] += float(loss) * len(x)
            sums[1] += float(distance) * len(x)
            sums[2] += len(x)
            if output.ndim == 2 and output.shape[1] > 1:  # class scores
                valid = labelled & (y < output.shape[1])
                sums[3] += float((output.argmax(1) == y)[valid].sum())
                sums[4] += float((target.argmax(1) == y)[valid].sum())
                sums[5] += float(valid.sum())
        loss, kl, count, correct, teacher_correct, labelled_count = self.processes.sum(sums)
        metrics = {"val_loss": loss / max(count, 1.0), "val_kl": kl / max(count, 1.0)}
        if labelled_count and labelled_count == count:
            metrics["val_accuracy"] = correct / labelled_count
            metrics["val_teacher_accuracy"] = teacher_correct / labelled_count
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _save(self, name: str, payload: dict[str, Any]) -> None:
        if self.checkpoints is not None and self.processes.main:
            self.checkpoints.mkdir(parents=True, exist_ok=True)  # first made after a trained epoch, never on errors
            write_bytes_atomic(self.checkpoints / name, _state_bytes(payload))

    def _load_last(self) -> dict[str, Any]:
        assert self.checkpoints is not None
        path = self.checkpoints / "last.pt"
        if not path.is_file():
            raise DepruneError(f"--resume: no checkpoint '{path}'")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say which
            raise DepruneError(f"--resume: cannot read '{path}' ({type(exc).__name__}: {exc})") from None
        saved = state.get("fingerprint")
        if state.get("version") != CHECKPOINT_VERSION or not isinstance(saved, dict):
            raise DepruneError(f"--resume: '{path}' was written by another version of deprune-onnx; start without "
                               "--resume")
        changed = [part for part, value in self.fingerprint.items() if saved.get(part) != value]
        if changed:
            raise DepruneError(f"--resume: '{path}' was trained with other {', '.join(changed)} (the fingerprint "
                               "differs); start without --resume or restore those")
        return state

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self, resume: bool, select: str) -> TrainResult:
        start, resumed_from = 1, None
        if resume:
            state = self._load_last()
            self.student.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            history, best_epoch, best_state = state["history"], state["best_epoch"], state["best_model"]
            start = resumed_from = state["epoch"] + 1
            if start > self.options.epochs:
                raise DepruneError(f"--resume: the checkpoint has {state['epoch']} epoch(s) already, so --epochs "
                                   f"{self.options.epochs} trains nothing; give --epochs above {state['epoch']}")
            self.log(f"resuming after epoch {state['epoch']} of {self.options.epochs} ({self.checkpoints})")
            self.masks.enforce()
        else:
            history = [{"epoch": 0, "lr": None, "train_loss": None, **self.validate(), "seconds": 0.0}]
            best_epoch, best_state = 0, _cpu_state(self.student.module)
        metric = selection_metric(select, "val_accuracy" in history[0])
        self.masks.attach()
        began = time.monotonic()
        try:
            for epoch in range(start, self.options.epochs + 1):
                tic = time.monotonic()
                lr = self.optimizer.param_groups[0]["lr"]
                train_loss, steps, skipped = self._train_epoch(epoch)
                broken = self.masks.violations()
                if broken:
                    raise CheckFailed(f"pruned weights moved during epoch {epoch}: {broken}")
                record = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "steps": steps,
                          "skipped_steps": skipped, **self.validate(), "seconds": time.monotonic() - tic}
                history.append(record)
                improved = metric == "last" or _rank(record, metric) < _rank(history[best_epoch], metric)
                if improved:
                    best_epoch, best_state = epoch, _cpu_state(self.student.module)
                    self._save("best.pt", {"epoch": epoch, "model": best_state})
                self._save("last.pt", {
                    "version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "epoch": epoch,
                    "model": _cpu_state(self.student.module), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                    "history": history, "best_epoch": best_epoch, "best_model": best_state})
                done = epoch - start + 1
                eta = (time.monotonic() - began) / done * (self.options.epochs - epoch)
                self.log(_epoch_line(record, metric, improved, self.options.epochs, eta))
                self.processes.barrier()
        finally:
            self.masks.detach()
        self.student.module.load_state_dict(best_state)
        self.student.module.to(self.device)
        self.masks.enforce()
        return TrainResult(history, best_epoch, metric, self.batchnorm_train, resumed_from, self.steps_per_epoch,
                           {"loader_batch": self.loader_batch, "processes": self.processes.world,
                            "amp": self.precision.autocast is not None, "autocast": self.precision.name,
                            "grad_scaler": self.precision.scaler, "options": asdict(self.options),
                            "warnings": skipped_warnings(history, self.precision)})


def skipped_warnings(history: list[dict[str, Any]], precision: Precision) -> list[str]:
    """One warning per epoch whose every optimizer step was skipped (the weights did not change in it)."""
    return [f"epoch {record['epoch']}: all {record['steps']} optimizer step(s) skipped ({precision.name} "
            "gradients overflowed the GradScaler's scale): the weights did not change; more steps per epoch "
            "(smaller --batch) or --no-amp"
            for record in history if record.get("steps") and record.get("skipped_steps") == record["steps"]]


def _rank(record: dict[str, Any], metric: str) -> tuple[float, float]:
    """Sort key of an epoch, smaller is better: the selection metric, then the validation loss (accuracy ties
    are common on small validation sets)."""
    return (-record[metric] if metric == "val_accuracy" else record[metric]), record["val_loss"]


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


def _epoch_line(record: dict[str, Any], metric: str, improved: bool, epochs: int, eta: float) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:.2g}", f"train loss {record['train_loss']:.4f}",
             f"val loss {record['val_loss']:.4f}", f"val KL {max(record['val_kl'], 0.0):.4f}"]  # KL >= 0; rounding can print -0.0000
    if "val_accuracy" in record:
        parts.append(f"val acc {100 * record['val_accuracy']:.2f}%")
    if record.get("skipped_steps"):
        parts.append(f"{record['skipped_steps']}/{record['steps']} steps skipped (gradient overflow)")
    parts.append(f"{record['seconds']:.0f} s, ETA {eta / 60:.1f} min")
    return ", ".join(parts) + (f" (best {metric})" if improved and metric != "last" else "")
