"""Training and evaluation views of a folder of images, preprocessed the ImageNet way.

Why a module here: distillation needs many different views of few images (random crops and flips), while the
accuracy tools need fixed views; both share the ImageNet preprocessing the torchvision models were trained with:
RGB, x/255, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), the image resized so that the model's input
(H, W) covers it at the 224/256 ratio of "resize 256, crop 224". Images are decoded and resized once; every view
is then a numpy slice. Labels come from the file name's last number (``imagenet_00_243.jpg`` -> 243).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deprune_onnx.errors import DepruneError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CROP_RATIO = 224 / 256
_LABEL_IN_NAME = re.compile(r"[_-](\d+)$")


def label_from_name(path: Path) -> int | None:
    """The class index ending the file name (``imagenet_00_243.jpg`` -> 243), or None."""
    match = _LABEL_IN_NAME.search(path.stem)
    return int(match.group(1)) if match else None


def find_images(directory: str | Path, option: str = "--images") -> list[Path]:
    """The image files of ``directory`` (not recursive), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DepruneError(f"{option} {directory}: not a directory")
    paths = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DepruneError(f"{option} {directory}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def _load_resized(path: Path, height: int, width: int) -> np.ndarray:
    """RGB float32 [h, w, 3] in [0, 1], resized (bilinear) so that (height, width) is CROP_RATIO of it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DepruneError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    scale = max(height / rgb.height, width / rgb.width) / CROP_RATIO
    size = (max(width, round(rgb.width * scale)), max(height, round(rgb.height * scale)))
    return np.asarray(rgb.resize(size, Image.BILINEAR), dtype=np.float32) / 255.0


@dataclass
class ImageSet:
    """Decoded, resized images of one folder and their labels (None where the name carries none)."""

    paths: list[Path]
    pixels: list[np.ndarray]     # [h, w, 3] RGB in [0, 1], each at least (height, width)
    labels: list[int | None]
    height: int
    width: int

    @classmethod
    def load(cls, paths: list[Path], height: int, width: int) -> "ImageSet":
        return cls(paths, [_load_resized(p, height, width) for p in paths], [label_from_name(p) for p in paths],
                   height, width)

    def _crop(self, index: int, fx: float, fy: float, flip: bool) -> np.ndarray:
        """One normalised CHW view: the (height, width) window at fractional position (fx, fy) of the slack."""
        image = self.pixels[index]
        top = int(round((image.shape[0] - self.height) * fy))
        left = int(round((image.shape[1] - self.width) * fx))
        view = image[top:top + self.height, left:left + self.width]
        if flip:
            view = view[:, ::-1]
        return ((view - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)

    def centre_views(self) -> np.ndarray:
        """[N, 3, H, W]: the standard evaluation view of every image (centre crop, not flipped)."""
        return np.stack([self._crop(i, 0.5, 0.5, False) for i in range(len(self.pixels))])

    def corner_flip_views(self) -> np.ndarray:
        """[4N, 3, H, W]: the four corner crops, horizontally flipped, of every image (views never used by
        ``centre_views``; the training draws come from the same distribution, but not these exact windows
        with probability one)."""
        corners = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
        return np.stack([self._crop(i, fx, fy, True) for i in range(len(self.pixels)) for fx, fy in corners])

    def random_views(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """[count, 3, H, W] random crops and flips of random images, and their labels (-1 where unknown)."""
        picks = rng.integers(0, len(self.pixels), count)
        positions = rng.random((count, 2))
        flips = rng.random(count) < 0.5
        views = np.stack([self._crop(int(i), fx, fy, bool(f)) for i, (fx, fy), f in zip(picks, positions, flips)])
        labels = np.array([-1 if self.labels[i] is None else self.labels[i] for i in picks], dtype=np.int64)
        return views.astype(np.float32), labels
