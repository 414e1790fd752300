"""`deprune-onnx build-plugin`: build the CUDA kernel and the TensorRT plugin libraries with CMake."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("build-plugin")
@click.option("--tensorrt-include", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="TensorRT include folder (holds NvInferRuntime.h); default $DEPRUNE_TRT_INCLUDE or "
                   "$TensorRT_INCLUDE_DIR. Without it only the CUDA kernel library is built.")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CMake build folder (default: build/native in a source checkout, else "
                   "$XDG_CACHE_HOME/deprune-onnx/native, i.e. ~/.cache/deprune-onnx/native).")
@click.option("--cuda-arch", default=None,
              help="CUDA architectures for CMake, e.g. '90' or '75-real;90' (default: sm_75..sm_90 + PTX).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Parallel build jobs.")
def command(tensorrt_include: Path | None, build_dir: Path | None, cuda_arch: str | None, jobs: int | None) -> None:
    """Build libdeprune_trt.so (+ the kernel library) and print the plugin library's path.

    Without TensorRT headers only the CUDA kernel library is built (enough for `bench`): exit 0, a note on
    stderr, nothing on stdout. Without nvcc nothing usable is built: exit 2.

    \b
    Example:
      deprune-onnx build-plugin --tensorrt-include /usr/include/x86_64-linux-gnu
      polygraphy run pruned.onnx --trt --plugins $(deprune-onnx plugin-path)
    """
    from deprune_onnx.errors import DepruneError
    from deprune_onnx.trt.native import build_native, find_tensorrt_include, tensorrt_header_version

    result = build_native(build_dir, tensorrt_include, cuda_architectures=cuda_arch, jobs=jobs)
    if result.kernels is None:
        raise DepruneError("nvcc (CUDA toolkit) not found: nothing but the host tests was built; put nvcc on PATH "
                           "or set CUDACXX")
    include = find_tensorrt_include(tensorrt_include)
    if result.plugin is None:  # the kernel library alone is what `bench` needs: a success, with a note
        click.echo(f"kernel library: {result.kernels}", err=True)
        click.echo("note: TensorRT headers not given, so the TensorRT plugin libraries (libdeprune_trt.so, "
                   "libdeprune_trt_dynamic.so) were not built; `bench` needs only the kernel library; for "
                   "build-engine, polygraphy or trtexec rerun with --tensorrt-include DIR", err=True)
        return
    click.echo(f"built against TensorRT {tensorrt_header_version(include)} headers; kernel library: "
               f"{result.kernels}; for trtexec --dynamicPlugins: {result.dynamic}", err=True)
    click.echo(str(result.plugin))
