"""Image options shared by ``eval``, ``sweep`` and ``prune --calib``: sources, preset, views, labels."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import click

PRESET_NAMES = ("imagenet", "pplcnet", "ppocr-cls")


def image_source_options(required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--images (repeatable: folder, file or glob), --preprocess, --crops, --labels."""
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        function = click.option("--labels", type=click.Path(dir_okay=False), metavar="FILE",
                                help="Labels file: 'file-name label' per line [default: from file names].")(function)
        function = click.option("--crops", type=int, default=1, show_default=True, metavar="N",
                                help="Views per image (centre, 4 corners, flips, smaller windows; at most 40).")(
            function)
        function = click.option("--preprocess", type=click.Choice(PRESET_NAMES), default=None,
                                help="Preprocessing preset [default: ppocr-cls for 48x192 inputs, else "
                                     "imagenet].")(function)
        function = click.option("--images", multiple=True, required=required, metavar="DIR|FILE|GLOB",
                                help="Images to use: a folder, a file or a quoted glob; repeatable.")(function)
        return function
    return decorate


def load_images(sources: Sequence[str], preprocess: str | None, crops: int, labels: str | None,
                input_shape: Sequence[Any], option: str = "--images") -> "ImageSet":
    """Find, label and preprocess the images for a model with ``input_shape``."""
    from deprune_onnx.evaluation.images import find_images, get_preset, guess_preset, image_labels, load_image_set

    paths = find_images(sources, option)
    preset = get_preset(preprocess or guess_preset(tuple(input_shape)))
    return load_image_set(paths, preset, crops, image_labels(paths, labels))
