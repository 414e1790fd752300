"""Training and validation images for ``finetune``, streamed: listed once, decoded per sample by DataLoader workers.

Sources (``--images`` / ``--val-images``), told apart by what is on disk:

- a folder whose sub-folders hold images: the ImageFolder layout (torchvision's ``ImageFolder``), one class per
  sub-folder, class index = position of the folder name in sorted order;
- a folder of images, an image file or a glob: unlabelled, except that a trailing ``_<class>`` in every file name
  is taken as the label (``imagenet_00_243.jpg`` -> 243), like ``eval``;
- a list file (any other file, e.g. ``train.txt``): one ``path [label]`` per line, relative paths taken from the
  list file's folder, ``#`` comments.

Views: training samples are the paper's augmentation, a random resized crop (torchvision's
``RandomResizedCrop`` parameters: area ``min_scale``..1 of the image, aspect 3/4..4/3) and a horizontal flip with
probability 1/2, preprocessed by the model's preset (``evaluation.images.training_view``); validation samples are
the standard view ``eval`` uses (``preprocess`` view 0). The random draws of a sample depend only on (seed, epoch,
sample index), never on the worker or process that decodes it, so a run is reproducible, a resumed run sees the
same views, and N processes see exactly the views one process would.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from deprune_onnx.errors import DepruneError
from deprune_onnx.evaluation.images import (IMAGE_SUFFIXES, Preset, find_images, label_from_name, preprocess,
                                            training_view)

UNLABELLED = -1
ASPECT_RANGE = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class ImageList:
    """Image paths, their labels (None where unknown) and, for an ImageFolder tree, the class folder names."""

    paths: list[Path]
    labels: list[int | None]
    classes: list[str] | None = None

    def subset(self, indices: np.ndarray) -> "ImageList":
        return ImageList([self.paths[i] for i in indices], [self.labels[i] for i in indices], self.classes)

    def labelled(self, classes: int) -> bool:
        """Whether every image has a label the model can output (``classes`` outputs)."""
        return self.label_problem(classes) is None

    def label_problem(self, classes: int) -> str | None:
        """Why the labels cannot be used with a ``classes``-way output (None: they can): images without a label,
        or the first label out of range, named by its file."""
        missing = sum(label is None for label in self.labels)
        if missing:
            return f"{missing} of {len(self.labels)} image(s) have no label"
        for path, label in zip(self.paths, self.labels):
            if not 0 <= label < classes:
                return f"{path} has label {label}, the model has {classes} classes"
        return None


def _list_file(path: Path, option: str) -> ImageList:
    paths: list[Path] = []
    labels: list[int | None] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DepruneError(f"{option} '{path}': cannot read the list file ({type(exc).__name__})") from None
    for number, line in enumerate(lines, 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise DepruneError(f"{option} '{path}':{number}: expected 'path [label]', got '{line.strip()}'")
        image = Path(parts[0]) if Path(parts[0]).is_absolute() else path.parent / parts[0]
        if not image.is_file():
            raise DepruneError(f"{option} '{path}':{number}: no such image '{parts[0]}'")
        paths.append(image)
        labels.append(int(parts[1]) if len(parts) == 2 else None)
    if not paths:
        raise DepruneError(f"{option} '{path}': the list file names no image")
    return ImageList(paths, labels)


def _image_folder(root: Path, option: str) -> ImageList:
    from torchvision.datasets import DatasetFolder

    try:
        tree = DatasetFolder(str(root), loader=str, extensions=IMAGE_SUFFIXES)
    except (FileNotFoundError, RuntimeError) as exc:  # a class folder without images
        raise DepruneError(f"{option} '{root}': not an image-folder tree ({exc})") from None
    return ImageList([Path(p) for p, _ in tree.samples], [int(c) for _, c in tree.samples], list(tree.classes))


def list_images(source: str, option: str = "--images") -> ImageList:
    """The images of ``source`` and their labels (see the module docstring for the three layouts)."""
    path = Path(source)
    if path.is_dir() and any(child.is_dir() for child in path.iterdir()):
        return _image_folder(path, option)
    if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
        return _list_file(path, option)
    paths = find_images(source, option)
    return ImageList(paths, [label_from_name(p) for p in paths])


def hold_out(images: ImageList, fraction: float, seed: int) -> tuple[ImageList, ImageList]:
    """(training, validation): a seeded random ``fraction`` of ``images`` (at least one) held out for validation."""
    if len(images.paths) < 2:
        raise DepruneError("--val-fraction: one training image cannot be split; pass --val-images")
    count = min(len(images.paths) - 1, max(1, int(round(fraction * len(images.paths)))))
    order = np.random.default_rng(seed).permutation(len(images.paths))
    return images.subset(np.sort(order[count:])), images.subset(np.sort(order[:count]))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for the random view of sample ``index`` in ``epoch`` (independent of workers and ranks)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class PresetImages(Dataset):
    """Images as model inputs: ``(tensor [3, H, W] float32, label or UNLABELLED)`` per index, decoded on demand.

    ``augment``: random resized crop + flip (set ``epoch`` before each pass; non-persistent workers pick it up);
    else the standard view of ``eval``.
    """

    def __init__(self, images: ImageList, preset: Preset, augment: bool, min_scale: float = 0.08,
                 seed: int = 0) -> None:
        self.images, self.preset, self.augment = images, preset, augment
        self.min_scale, self.seed, self.epoch = min_scale, seed, 0

    def __len__(self) -> int:
        return len(self.images.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.images.paths[index], self.images.labels[index]
        if self.augment:
            view = self._random_view(path, sample_seed(self.seed, self.epoch, index))
        else:
            view = preprocess(path, self.preset, 1)[0]
        return torch.from_numpy(view), UNLABELLED if label is None else label

    def _random_view(self, path: Path, seed: int) -> np.ndarray:
        from torchvision.transforms import RandomResizedCrop

        def window(image: object) -> tuple[int, int, int, int]:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed also queues a CUDA seeding call, which records a
                # stack trace per sample while CUDA is not initialised (half the cost of a 28x28 view)
                torch.default_generator.manual_seed(seed)
                top, left, height, width = RandomResizedCrop.get_params(image, [self.min_scale, 1.0],
                                                                        list(ASPECT_RANGE))
            return left, top, left + width, top + height

        flipped = bool(np.random.default_rng(seed).random() < 0.5)
        return training_view(path, self.preset, window, flipped)
