"""``deprune-onnx sweep``: agreement and KL against DW pruning ratio, per method, with and without --calib."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from deprune_onnx.cli.image_options import image_source_options, load_images
from deprune_onnx.cli.options import parse_ratio_list

if TYPE_CHECKING:
    from deprune_onnx.evaluation.images import PreprocessOptions


@click.command("sweep")
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=True))
@image_source_options(required=True)
@click.option("--ratios", default="0.3,0.5,0.7,0.85", show_default=True, metavar="R,R,...",
              help="DW pruning ratios to try.")
@click.option("--methods", default="dcp,b,bh,channel", show_default=True, metavar="M,M,...",
              help="Methods to compare: dcp, b, bh, channel, global.")
@click.option("--calib", "calib_sources", multiple=True, metavar="DIR|FILE|GLOB",
              help="Calibration images: every point is also measured with reconstruction. Keep them apart from "
                   "--images, or the KL is optimistic.")
@click.option("--calib-crops", type=int, metavar="V", help="Views per calibration image [default: auto, >= 64 "
                                                             "samples].")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="Write sweep.json, sweep.md and "
                                                                           "sweep.png (matplotlib) here.")
@click.option("--no-plot", is_flag=True, help="Do not draw sweep.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON on stdout.")
def command(model_path: str, images: tuple[str, ...], preprocessing: "PreprocessOptions", crops: int,
            labels: str | None,
            ratios: str, methods: str, calib_sources: tuple[str, ...], calib_crops: int | None,
            output_dir: str | None, no_plot: bool, as_json: bool) -> None:
    """Prune MODEL.onnx at every ratio with every method and measure each against the unpruned model.

    Prints a Markdown table (top-1 agreement and mean KL per method and ratio for class-score models, relative
    L2 error and cosine for maps and sequences; with --calib, also after
    calibrated reconstruction) and, with -o, writes it with a JSON copy and a PNG plot.

    \b
    Examples:
      deprune-onnx sweep mobilenet_v2.onnx --images eval_images/ --ratios 0.3,0.5 --methods b,bh
      deprune-onnx sweep mobilenet_v2.onnx --images 'samples/imagenet_0[5-9]_*.jpg' --crops 10 \\
          --calib 'samples/imagenet_0[0-4]_*.jpg' -o sweep/
    """
    from deprune_onnx.errors import DepruneError
    from deprune_onnx.evaluation.images import find_images
    from deprune_onnx.evaluation.runner import ModelRunner, lower_custom_ops
    from deprune_onnx.onnx_io.load_save import load_model, write_bytes_atomic, write_json_atomic, write_text_atomic
    from deprune_onnx.options import DW_METHODS, CalibOptions, check_ratio
    from deprune_onnx.report.plots import require_matplotlib
    from deprune_onnx.progress import configure_progress
    from deprune_onnx.evaluation.sweep import format_sweep_table, plot_sweep, sweep

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    for method in method_list:
        if method not in DW_METHODS:
            raise DepruneError(f"--methods '{method}': expected some of {', '.join(DW_METHODS)}")
    ratio_list = [check_ratio(r, "--ratios") for r in parse_ratio_list(ratios, "--ratios")]
    out = Path(output_dir) if output_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    plot = out is not None and not no_plot
    if plot:
        require_matplotlib("sweep.png")
    model = lower_custom_ops(load_model(model_path), str(model_path))  # a plugin-format model: its dense form
    image_set = load_images(images, preprocessing, crops, labels, ModelRunner.image_input_shape(model),
                            (model, str(model_path)))
    calib = None
    notes: list[str] = []
    if calib_sources:
        calib = CalibOptions(sources=list(calib_sources), preprocess=image_set.preprocessing, crops=calib_crops)
        overlap = set(find_images(calib_sources, "--calib")) & set(image_set.paths)
        if overlap:
            notes.append(f"warning: {len(overlap)} image(s) are both calibration and evaluation images: the KL "
                         "after reconstruction is optimistic")
    configure_progress(False if as_json else None)
    baseline, rows = sweep(model, image_set, method_list, ratio_list, calib)
    table = format_sweep_table(rows)
    data = {"model": str(model_path), "images": [str(p) for p in image_set.paths], "views": image_set.views,
            "preprocess": image_set.preset, "preprocessing": image_set.preprocessing.describe(),
            "calibration_images": list(calib_sources), "baseline": baseline,
            "rows": rows, "notes": notes}
    if out is not None:
        write_json_atomic(out / "sweep.json", data)
        write_text_atomic(out / "sweep.md", table + "\n")
        if plot:
            write_bytes_atomic(out / "sweep.png", plot_sweep(rows))
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for note in notes:
        click.echo(note, err=True)
    labels_line = ""
    if baseline["labels"]:
        labels_line = f", unpruned top-1 {100 * baseline['labels']['top1']:.0f}%"
    click.echo(f"{model_path}: {len(image_set.paths)} images x {image_set.views} views{labels_line}")
    click.echo(table)
    if out is not None:
        click.echo(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}" + (f", {out / 'sweep.png'}" if plot else ""))
