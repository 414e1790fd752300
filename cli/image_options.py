"""Image options shared by every image command (``eval``, ``sweep``, ``compare``, ``finetune``, ``prune --calib``):
sources, views, labels, and one group of preprocessing options.

The presets, the metadata_props keys and how they combine live in ``deprune_onnx.evaluation.images`` (the one
image pipeline, ``resolve_preprocessing``); this module only spells the options once so that every command
names and documents them alike. ``prune`` takes the same group with the prefix ``--calib-``.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Sequence

import click

from deprune_onnx.options import PRESET_NAMES

if TYPE_CHECKING:
    import onnx

    from deprune_onnx.evaluation.images import ImageSet, Preset, PreprocessOptions

# == evaluation.images.CHANNEL_ORDERS / CROP_RULES (kept light for --help; a test checks)
CHANNEL_ORDERS = ("RGB", "BGR")
CROP_RULES = ("center", "none")
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def preprocessing_options(prefix: str = "--", dest: str = "preprocessing") -> Decorator:
    """--preprocess, --mean, --std, --scale, --channel-order, --resize, --crop (each name after ``prefix``), given
    to the command as one ``PreprocessOptions`` in the keyword ``dest``."""
    key = prefix.lstrip("-").replace("-", "_")
    specs: list[tuple[str, str, dict[str, Any]]] = [
        ("preprocess", "preset", dict(type=click.Choice(PRESET_NAMES), metavar="PRESET",
                                      help=f"Preprocessing preset: {', '.join(PRESET_NAMES)} [default: from the "
                                           "model's metadata_props, else ppocr-cls for 48x192 inputs, else "
                                           "imagenet].")),
        ("mean", "mean", dict(metavar="R,G,B", help="Per-channel mean subtracted, on the --scale [default: the "
                                                    "preset's].")),
        ("std", "std", dict(metavar="R,G,B", help="Per-channel std divided by after the mean, on the --scale "
                                                  "[default: the preset's].")),
        ("scale", "scale", dict(type=click.Choice(["1", "255"]), help="Scale of --mean/--std: 1 = pixel/255 "
                                                                      "(0..1), 255 = raw pixels (0..255) "
                                                                      "[default: 1].")),
        ("channel-order", "channel_order", dict(type=click.Choice(CHANNEL_ORDERS, case_sensitive=False),
                                                help="Channel order the model wants [default: the preset's].")),
        ("resize", "resize", dict(metavar="N|HxW", help="N: short side to N pixels (aspect kept); HxW: exactly "
                                                        "H x W [default: the preset's, 256 for 224 inputs].")),
        ("crop", "crop", dict(type=click.Choice(CROP_RULES), help="center: the model's H x W from the middle; "
                                                                  "none: the whole image resized to H x W "
                                                                  "[default: center].")),
    ]

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {field: kwargs.pop(f"{key}{name.replace('-', '_')}") for name, field, _ in specs}
            kwargs[dest] = preprocess_options(prefix, **values)
            return function(*args, **kwargs)

        for name, _, settings in reversed(specs):
            wrapper = click.option(f"{prefix}{name}", f"{key}{name.replace('-', '_')}", default=None,
                                   **settings)(wrapper)
        return wrapper
    return decorate


def preprocess_options(prefix: str = "--", **values: Any) -> "PreprocessOptions":
    """Parse the raw option values (strings or None) into a ``PreprocessOptions`` (DepruneError when malformed)."""
    from deprune_onnx.evaluation.images import PreprocessOptions, parse_channels, parse_resize, parse_scale

    mean, std, scale = values.get("mean"), values.get("std"), values.get("scale")
    if values.get("resize") is not None:
        parse_resize(values["resize"], f"{prefix}resize")
    order = values.get("channel_order")
    return PreprocessOptions(
        preset=values.get("preset"),
        mean=parse_channels(mean, f"{prefix}mean") if mean is not None else None,
        std=parse_channels(std, f"{prefix}std") if std is not None else None,
        scale=parse_scale(scale, f"{prefix}scale") if scale is not None else None,
        channel_order=order.upper() if order is not None else None, resize=values.get("resize"),
        crop=values.get("crop"))


def image_source_options(required: bool, crops: bool = True, labels: bool = True) -> Decorator:
    """--images (repeatable: folder, file or glob), the preprocessing group and, unless turned off, --crops and
    --labels."""
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        if labels:
            function = click.option("--labels", type=click.Path(dir_okay=False), metavar="FILE",
                                    help="Labels file: 'file-name label' per line [default: from file names: "
                                         "a trailing _<class>, as imagenet_00_243.jpg; ImageNet's "
                                         "ILSVRC2012_val_* names need this file].")(
                function)
        if crops:
            function = click.option("--crops", type=int, default=1, show_default=True, metavar="N",
                                    help="Views per image (centre, 4 corners, flips, smaller windows; at most "
                                         "40).")(function)
        function = preprocessing_options()(function)
        function = click.option("--images", multiple=True, required=required, metavar="DIR|FILE|GLOB",
                                help="Images to use: a folder, a file or a quoted glob; repeatable.")(function)
        return function
    return decorate


def load_images(sources: Sequence[str], preprocessing: "PreprocessOptions | Preset | None", crops: int,
                labels: str | None, input_shape: Sequence[Any], *models: "tuple[onnx.ModelProto, str] | None",
                option: str = "--images") -> "ImageSet":
    """Find, label and preprocess the images for a model with ``input_shape`` (metadata_props from ``models``,
    (model, label) pairs, see ``preprocessing_for``)."""
    from deprune_onnx.evaluation.images import find_images, image_labels, load_image_set, preprocessing_for

    paths = find_images(sources, option)
    preset = preprocessing_for(preprocessing, input_shape, *models)
    return load_image_set(paths, preset, crops, image_labels(paths, labels))
