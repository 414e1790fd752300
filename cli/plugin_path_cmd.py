"""`deprune-onnx plugin-path`: print where the built plugin library is."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("plugin-path")
@click.option("--kind", type=click.Choice(["plugin", "dynamic", "kernels"]), default="plugin", show_default=True,
              help="plugin: self-registering libdeprune_trt.so (polygraphy --plugins, trtexec --staticPlugins); "
                   "dynamic: libdeprune_trt_dynamic.so (trtexec --dynamicPlugins); kernels: the CUDA C ABI library.")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CMake build folder used by build-plugin (default: build/native in a source checkout, else "
                   "~/.cache/deprune-onnx/native).")
def command(kind: str, build_dir: Path | None) -> None:
    """Print the path of a built library ($DEPRUNE_TRT_PLUGIN overrides --kind plugin).

    \b
    Example:
      polygraphy run pruned.onnx --trt --plugins $(deprune-onnx plugin-path)
      trtexec --onnx=pruned.onnx --dynamicPlugins=$(deprune-onnx plugin-path --kind dynamic)
    """
    from deprune_onnx.trt.native import plugin_library

    click.echo(str(plugin_library(kind, build_dir)))
