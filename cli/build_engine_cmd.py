"""`deprune-onnx build-engine`: TensorRT engine from a pruned model, with a check that the plugin is really used."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("build-engine")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Engine file to write.")
@click.option("--plugin", type=click.Path(path_type=Path), default=None,
              help="Plugin library (default: $DEPRUNE_TRT_PLUGIN, else the one build-plugin made).")
@click.option("--workspace", type=click.IntRange(min=1), default=None, help="Workspace memory pool limit in MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Timing cache file: read when it exists, written after the build.")
@click.option("--min-shapes", default=None, help="Dynamic inputs, trtexec style: NAME:1x3x224x224[,NAME2:...]")
@click.option("--opt-shapes", default=None, help="Shapes TensorRT tunes for (same syntax).")
@click.option("--max-shapes", default=None, help="Largest shapes the engine accepts (same syntax).")
def command(model: Path, output: Path, plugin: Path | None, workspace: int | None, timing_cache: Path | None,
            min_shapes: str | None, opt_shapes: str | None, max_shapes: str | None) -> None:
    """Build a TensorRT engine from MODEL with the DRSparseDepthwiseConv plugin and print its layers.

    Fails (exit 2) when TensorRT, a GPU or the plugin is missing, and when any DRSparseDepthwiseConv node did not
    become a plugin layer.

    \b
    Example:
      deprune-onnx build-engine pruned.onnx -o pruned.engine --workspace 1024 \\
          --min-shapes input:1x3x224x224 --opt-shapes input:8x3x224x224 --max-shapes input:32x3x224x224
    """
    from deprune_onnx.onnx_io.load_save import check_output_path
    from deprune_onnx.trt.engine import build_engine, parse_shapes

    if not model.is_file():
        from deprune_onnx.errors import DepruneError
        raise DepruneError(f"{model}: no such file")
    check_output_path(output, model)
    shapes = {"min": parse_shapes(min_shapes, "--min-shapes"), "opt": parse_shapes(opt_shapes, "--opt-shapes"),
              "max": parse_shapes(max_shapes, "--max-shapes")}
    result = build_engine(model, output, plugin, workspace_mb=workspace, timing_cache=timing_cache, shapes=shapes)
    click.echo(f"TensorRT {result.tensorrt_version}: {result.plugin_layers} DRSparseDepthwiseConv plugin layer(s); "
               f"engine layers ({len(result.layers)}):")
    for line in result.layers:
        click.echo(f"  {line}")
    click.echo(f"wrote {result.engine_path}")
