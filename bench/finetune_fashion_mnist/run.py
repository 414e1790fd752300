"""Labelled end-to-end reproduction of the paper's claim shape on Fashion-MNIST (CPU, about half an hour).

train a small MobileNetV2-style DSConv network -> export to ONNX (BatchNorm kept: fine-tuning trains it; see
the README for why) -> prune bh DW 0.78 + PW 0.5 (one-shot, and with
--calib) and DW channel pruning at the same ratios -> `deprune-onnx finetune` the one-shot bh and channel models
the same way -> labelled top-1 on the 10k test images (never used for training, calibration or selection).

Data: the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist): 60k training and 10k test
28x28 grey images. The training images are split (seeded) into training and a held-out validation set; the
validation set picks the teacher's and every fine-tuned model's best epoch; the calibration images come from
the training split. Images are written as PNG (training and validation in the ImageFolder layout, test as a flat
folder with the label in each name) and read through deprune-onnx's own preprocessing (the `imagenet` preset
fitted to the 28x28 input: grey as RGB, short side to 32, centre crop 28, ImageNet mean/std), so teacher
training, pruning, fine-tuning and evaluation all see the same inputs.

Usage: nice -n 10 python bench/finetune_fashion_mnist/run.py --work /tmp/fmnist [--teacher-epochs 4]
       [--finetune-epochs 7] [--finetune-images N] [--export batchnorm|folded]
Writes WORK/results.json and prints a markdown table (copied into bench/results/finetune_fashion_mnist.md).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

DATA = Path("/usr/share/datasets/fashion-mnist")
DW_RATIO, PW_RATIO = 0.78, 0.5
# One OpenMP thread for PyTorch here and in every deprune-onnx command: on the shared 2-core machine two threads
# made a training step 3-7x slower than one (2.0 s vs 0.3 s per batch of 128, channels-last), and the DataLoader
# worker decoding images uses the other core.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_images(work: Path, val_count: int, calib_count: int, seed: int) -> None:
    """PNG folders: train/<class>/, val/<class>/ (ImageFolder), test/ and calib/ (flat, label in the name)."""
    from PIL import Image

    if (work / "done").exists():
        return
    train_x, train_y = read_idx(DATA / "train-images-idx3-ubyte.gz"), read_idx(DATA / "train-labels-idx1-ubyte.gz")
    test_x, test_y = read_idx(DATA / "t10k-images-idx3-ubyte.gz"), read_idx(DATA / "t10k-labels-idx1-ubyte.gz")
    order = np.random.default_rng(seed).permutation(len(train_x))
    val, train = order[:val_count], order[val_count:]
    for split, indices in (("train", train), ("val", val)):
        for label in range(10):
            (work / split / f"{label}").mkdir(parents=True, exist_ok=True)
        for i in indices:
            Image.fromarray(train_x[i]).save(work / split / f"{train_y[i]}" / f"{i:05d}.png")
    (work / "test").mkdir(exist_ok=True)
    for i, (image, label) in enumerate(zip(test_x, test_y)):
        Image.fromarray(image).save(work / "test" / f"test_{i:05d}_{label}.png")
    (work / "calib").mkdir(exist_ok=True)
    for i in train[:calib_count]:
        Image.fromarray(train_x[i]).save(work / "calib" / f"calib_{i:05d}_{train_y[i]}.png")
    (work / "done").write_text("ok\n")


def make_network() -> "torch.nn.Module":
    """MobileNetV2-style at 14x14 and 7x7: stem 3x3 conv stride 2, five inverted-residual blocks (PW expand x4
    -> DW 3x3 -> PW project, residual where shapes allow; DW widths 64-128, so every DW layer spans 2-4
    sub-GEMMs), global average pool, linear. About 3.5 M multiply-adds per image."""
    import torch
    from torch import nn

    def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Module:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(c_out)]
        return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 4) -> None:
            super().__init__()
            hidden = c_in * expand
            self.residual = stride == 1 and c_in == c_out
            self.conv = nn.Sequential(conv_bn(c_in, hidden, 1), conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                      conv_bn(hidden, c_out, 1, act=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if self.residual else self.conv(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(conv_bn(3, 16, 3, 2), Block(16, 24, 1), Block(24, 24, 1),
                                          Block(24, 32, 2), Block(32, 32, 1), Block(32, 64, 1))
            self.classifier = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x).mean((2, 3)))

    return Net()


def subset_list(work: Path, split: str, count: int, seed: int) -> Path:
    """A list file ('path label' per line) of ``count`` seeded random images of ``split`` (train or val): a
    shared CPU cannot afford epochs over all 55k; teacher and fine-tuning use the same subsets."""
    from deprune_onnx.finetune.data import list_images

    path = work / f"{split}_{count}.txt"
    if not path.exists():
        images = list_images(str(work / split))
        pick = np.sort(np.random.default_rng(seed + 1).permutation(len(images.paths))[:count])
        path.write_text("".join(f"{images.paths[i].relative_to(work)} {images.labels[i]}\n" for i in pick))
    return path


def train_teacher(work: Path, train_list: Path, val_list: Path, epochs: int, batch: int, min_scale: float,
                  seed: int, log: list[str]) -> Path:
    """Train with deprune-onnx's own data pipeline (random resized crop + flip, imagenet preset at 28x28);
    keep the epoch with the best validation accuracy; export to ONNX with a symbolic batch."""
    import torch
    from torch.utils.data import DataLoader

    from deprune_onnx.evaluation.images import PRESETS, fit_preset
    from deprune_onnx.finetune.data import PresetImages, list_images

    path = work / "teacher.onnx"
    if path.exists():
        return path
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # see ONE_THREAD
    preset = fit_preset(PRESETS["imagenet"], (1, 3, 28, 28))
    train = PresetImages(list_images(str(train_list)), preset, augment=True, min_scale=min_scale, seed=seed)
    val = PresetImages(list_images(str(val_list)), preset, augment=False)
    loader = DataLoader(train, batch_size=batch, shuffle=True, num_workers=1, drop_last=True)
    val_loader = DataLoader(val, batch_size=256, num_workers=1)
    net = make_network().to(memory_format=torch.channels_last)  # DW convs: 3-4x faster on CPU (measured)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=epochs * len(loader))
    best, best_state = -1.0, None
    for epoch in range(1, epochs + 1):
        train.epoch = epoch
        net.train()
        tic = time.time()
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(net(x.to(memory_format=torch.channels_last)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        net.eval()
        with torch.no_grad():
            correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in val_loader)
        accuracy = correct / len(val)
        line = f"teacher epoch {epoch}/{epochs}: val top-1 {100 * accuracy:.2f}% ({time.time() - tic:.0f} s)"
        print(line, flush=True)
        log.append(line)
        if accuracy > best:
            best, best_state = accuracy, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net = net.to(memory_format=torch.contiguous_format).eval()
    torch.save(best_state, work / "teacher.pt")
    # opset 17: onnx2torch 1.5 (finetune's converter) has no converter for Constant-19 that newer opsets emit.
    # teacher.onnx: BatchNorm folded into the convs (the usual export); teacher_bn.onnx: BatchNorm kept as nodes
    # (no constant folding), same function.
    for target, folding in ((path, True), (work / "teacher_bn.onnx", False)):
        torch.onnx.export(net, torch.zeros(1, 3, 28, 28), str(target), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False, opset_version=17, do_constant_folding=folding)
    return path


def cli(*args: object, log: list[str]) -> str:
    command = ["deprune-onnx", *map(str, args)]
    line = " ".join(shlex.quote(part) for part in command)
    print(f"$ {line}", flush=True)
    log.append(f"$ {line}")
    tic = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    log.append(f"  ({time.time() - tic:.0f} s)")
    if done.stderr.strip():
        print(done.stderr.strip()[-2000:], flush=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {line}")
    if args_echo := [l for l in done.stdout.splitlines() if l.startswith(("epoch", "best epoch", "masks"))]:
        print("\n".join(args_echo), flush=True)
        log.extend(args_echo)
    return done.stdout


def test_accuracy(model: Path, work: Path, log: list[str]) -> float:
    report = json.loads(cli("eval", model, "--images", work / "test", "--batch-size", 256, "--json", log=log))
    return float(find_top1(report))


def find_top1(report: dict) -> float:
    for key in ("top1", "top1_accuracy", "accuracy"):
        if key in report:
            return report[key]
    for value in report.values():
        if isinstance(value, dict):
            try:
                return find_top1(value)
            except KeyError:
                pass
    raise KeyError("top-1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/deprune-fashion-mnist"))
    parser.add_argument("--train-images", type=int, default=20000, help="Teacher's training subset (of 55k).")
    parser.add_argument("--val-images", type=int, default=5000, help="Validation subset (of 5k).")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--teacher-min-scale", type=float, default=0.85,
                        help="Smallest area share of the teacher's random resized crops.")
    parser.add_argument("--finetune-epochs", type=int, default=7)
    parser.add_argument("--finetune-images", type=int, default=None,
                        help="Fine-tune on this many of the training subset's images [default: all of them].")
    parser.add_argument("--finetune-args", default="--optimizer adam --lr 2e-3 --label-weight 0.8 --schedule cosine "
                                                   "--batch 128 --min-scale 0.85 --weight-decay 0",
                        help="Options passed to every deprune-onnx finetune run.")
    parser.add_argument("--export", choices=("batchnorm", "folded"), default="batchnorm",
                        help="Teacher ONNX that is pruned and fine-tuned: batchnorm = BatchNorm kept as nodes "
                             "(finetune trains them in train mode), folded = BatchNorm folded into the convs.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    began, load_before = time.time(), os.getloadavg()
    phases: dict[str, float] = {}
    write_images(work, val_count=5000, calib_count=512, seed=args.seed)
    phases["images"] = time.time() - began
    train_list = subset_list(work, "train", args.train_images, args.seed)
    val_list = subset_list(work, "val", args.val_images, args.seed)
    folded = train_teacher(work, train_list, val_list, args.teacher_epochs, 128,
                            args.teacher_min_scale, args.seed, log)
    teacher = folded if args.export == "folded" else work / "teacher_bn.onnx"
    phases["teacher"] = time.time() - began - sum(phases.values())
    common = ["--dw-ratio", DW_RATIO, "--pw-ratio", PW_RATIO, "--pw-align", 8, "--format", "dense", "-q"]
    cli("prune", teacher, work / "bh.onnx", "--method", "bh", *common, log=log)
    cli("prune", teacher, work / "bh_calib.onnx", "--method", "bh", *common, "--calib", work / "calib", log=log)
    cli("prune", teacher, work / "channel.onnx", "--method", "channel", *common, log=log)
    phases["prune"] = time.time() - began - sum(phases.values())
    finetune_list = (subset_list(work, "train", args.finetune_images, args.seed) if args.finetune_images
                     else train_list)
    finetune = [*shlex.split(args.finetune_args), "--epochs", args.finetune_epochs, "--workers", 1,
                "--images", finetune_list, "--val-images", val_list, "--teacher", teacher]
    finetuned = {}
    for name in ("bh", "channel"):
        cli("finetune", work / f"{name}.onnx", work / f"{name}_ft.onnx", *finetune, log=log)
        finetuned[name] = json.loads((work / f"{name}_ft.finetune.json").read_text())
    phases["finetune"] = time.time() - began - sum(phases.values())
    models = {"unpruned": teacher, "unpruned, BatchNorm folded": folded, "bh one-shot": work / "bh.onnx",
              "bh + calib": work / "bh_calib.onnx",
              "bh fine-tuned": work / "bh_ft.onnx", "channel one-shot": work / "channel.onnx",
              "channel fine-tuned": work / "channel_ft.onnx"}
    accuracy = {name: test_accuracy(path, work, log) for name, path in models.items()}
    phases["eval"] = time.time() - began - sum(phases.values())
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    results = {
        "accuracy_test_top1": accuracy,
        "best_epoch": {name: record["best_epoch"] for name, record in finetuned.items()},
        "finetune_history": {name: record["history"] for name, record in finetuned.items()},
        "val_top1": {name: record["history"][record["best_epoch"]]["val_accuracy"]
                     for name, record in finetuned.items()},
        "teacher_val_top1": finetuned["bh"]["history"][0]["val_teacher_accuracy"],
        "commands": log, "seconds": round(time.time() - began),
        "phase_seconds": {name: round(value) for name, value in phases.items()},
        "cpu_seconds": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime),
        "load_average_1_5_15": {"start": load_before, "end": os.getloadavg()},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv,
    }
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| model | test top-1 (%) |\n|---|---|")
    for name, value in accuracy.items():
        print(f"| {name} | {100 * value:.2f} |")
    print(f"total {results['seconds']} s wall ({results['phase_seconds']}), {results['cpu_seconds']} CPU s, "
          f"load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
