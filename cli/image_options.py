"""Image options shared by ``eval``, ``sweep``, ``compare`` and ``finetune``: sources, preset, views, labels.

The presets and their meaning live in ``deprune_onnx.evaluation.images`` (the one image pipeline); this module
only spells the options once so that every command names and documents them alike.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import click

from deprune_onnx.options import PRESET_NAMES

if TYPE_CHECKING:
    from deprune_onnx.evaluation.images import ImageSet

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def preprocess_option(name: str = "--preprocess") -> Decorator:
    """The preset choice; None means: guessed from the model's input shape."""
    return click.option(name, "preprocess", type=click.Choice(PRESET_NAMES), default=None,
                        help="Preprocessing preset [default: ppocr-cls for 48x192 inputs, else imagenet].")


def image_source_options(required: bool, crops: bool = True, labels: bool = True) -> Decorator:
    """--images (repeatable: folder, file or glob), --preprocess and, unless turned off, --crops and --labels."""
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        if labels:
            function = click.option("--labels", type=click.Path(dir_okay=False), metavar="FILE",
                                    help="Labels file: 'file-name label' per line [default: from file names].")(
                function)
        if crops:
            function = click.option("--crops", type=int, default=1, show_default=True, metavar="N",
                                    help="Views per image (centre, 4 corners, flips, smaller windows; at most "
                                         "40).")(function)
        function = preprocess_option()(function)
        function = click.option("--images", multiple=True, required=required, metavar="DIR|FILE|GLOB",
                                help="Images to use: a folder, a file or a quoted glob; repeatable.")(function)
        return function
    return decorate


def load_images(sources: Sequence[str], preprocess: str | None, crops: int, labels: str | None,
                input_shape: Sequence[Any], option: str = "--images") -> "ImageSet":
    """Find, label and preprocess the images for a model with ``input_shape``."""
    from deprune_onnx.evaluation.images import find_images, image_labels, load_image_set, resolve_preset

    paths = find_images(sources, option)
    return load_image_set(paths, resolve_preset(preprocess, input_shape), crops, image_labels(paths, labels))
