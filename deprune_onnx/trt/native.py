"""Building and locating the native libraries (CUDA kernel, TensorRT plugin) with CMake.

Why a module of its own: `build-plugin`, `plugin-path`, `build-engine`, the GPU check and the tests all need the
same answers (where the source tree and the build folder are, which CMake options, which file is which library),
and none of them should guess differently. Nothing here imports TensorRT or touches a GPU.

The libraries (see the top-level CMakeLists.txt):
  libdeprune_trt.so          self-registering plugin: `polygraphy run --plugins`, `trtexec --staticPlugins`
  libdeprune_trt_dynamic.so  exports getCreators: `trtexec --dynamicPlugins`, IPluginRegistry.load_library
  libdeprune_drdw_kernels.so the CUDA kernel's C ABI, no TensorRT (bench/gpu/ loads it with ctypes)
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deprune_onnx.errors import DepruneError

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _is_source_tree(path: Path) -> bool:
    return (path / "CMakeLists.txt").is_file() and (path / "trt_plugins").is_dir()


def _user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deprune-onnx"


# A source checkout (editable install) builds from its own tree into build/native; an installed wheel carries
# the same CMakeLists.txt and trt_plugins/ as package data (deprune_onnx/native_src, see pyproject.toml) and
# builds into the user's cache folder, since site-packages is no place for build output.
CHECKOUT_BUILD = _is_source_tree(_PACKAGE_DIR.parent)
SOURCE_ROOT = _PACKAGE_DIR.parent if CHECKOUT_BUILD else _PACKAGE_DIR / "native_src"
DEFAULT_BUILD_DIR = SOURCE_ROOT / "build" / "native" if CHECKOUT_BUILD else _user_cache_dir() / "native"
PLUGIN_ENV = "DEPRUNE_TRT_PLUGIN"
TRT_INCLUDE_ENV = "DEPRUNE_TRT_INCLUDE"

LIBRARY_FILES = {
    "plugin": "libdeprune_trt.so",
    "dynamic": "libdeprune_trt_dynamic.so",
    "kernels": "libdeprune_drdw_kernels.so",
}
KERNEL_C_ABI = ("drdwAbiVersion", "drdwPlanLaunch", "drdwEnqueue", "drdwStatusString")


@dataclass(frozen=True)
class BuildResult:
    """What a CMake build produced; a path is None when that library was not built."""

    build_dir: Path
    kernels: Path | None
    plugin: Path | None
    dynamic: Path | None


def _source_root() -> Path:
    if not _is_source_tree(SOURCE_ROOT):
        raise DepruneError(f"{SOURCE_ROOT}: no CMakeLists.txt and trt_plugins/ here; this installation of "
                           "deprune-onnx lacks its native sources (reinstall it, or use a source checkout)")
    return SOURCE_ROOT


def find_tensorrt_include(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The TensorRT header folder: the explicit option, else $DEPRUNE_TRT_INCLUDE, else $TensorRT_INCLUDE_DIR."""
    candidate = explicit or os.environ.get(TRT_INCLUDE_ENV) or os.environ.get("TensorRT_INCLUDE_DIR")
    if not candidate:
        return None
    path = Path(candidate)
    if not (path / "NvInferRuntime.h").is_file():
        raise DepruneError(f"{path}: no NvInferRuntime.h here; --tensorrt-include must name TensorRT's include folder")
    return path


def tensorrt_header_version(include_dir: Path) -> str:
    """'major.minor.patch' from NvInferVersion.h (TensorRT 10 names them NV_TENSORRT_*, 11 TRT_*_ENTERPRISE)."""
    text = (include_dir / "NvInferVersion.h").read_text(errors="replace")
    parts = []
    for part in ("MAJOR", "MINOR", "PATCH"):
        value = None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "#define" and fields[1] in (
                    f"NV_TENSORRT_{part}", f"TRT_{part}_ENTERPRISE"):
                value = fields[2]
                break
        parts.append(value or "?")
    return ".".join(parts)


def cmake_configure_command(build_dir: Path, tensorrt_include: Path | None, *, cuda: bool = True,
                            cuda_architectures: str | None = None, warnings_as_errors: bool = False) -> list[str]:
    """The cmake configure command line (a function so tests and docs show exactly what runs)."""
    command = ["cmake", "-S", str(_source_root()), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
               f"-DDEPRUNE_ENABLE_CUDA={'ON' if cuda else 'OFF'}",
               f"-DTensorRT_INCLUDE_DIR={tensorrt_include or ''}",
               f"-DDEPRUNE_WARNINGS_AS_ERRORS={'ON' if warnings_as_errors else 'OFF'}"]
    if cuda_architectures:
        command.append(f"-DDEPRUNE_CUDA_ARCHITECTURES={cuda_architectures}")
    return command


def _run(command: list[str], what: str) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DepruneError(f"{command[0]} not found; install CMake >= 3.24 to {what}") from None
    if completed.returncode != 0:
        tail = (completed.stdout + completed.stderr).strip().splitlines()[-12:]
        raise DepruneError(f"{what} failed (exit {completed.returncode}): " + " | ".join(tail))
    return completed.stdout + completed.stderr


def build_native(build_dir: str | os.PathLike[str] | None = None, tensorrt_include: str | os.PathLike[str] | None = None,
                 *, cuda: bool = True, cuda_architectures: str | None = None, jobs: int | None = None,
                 warnings_as_errors: bool = False, targets: list[str] | None = None) -> BuildResult:
    """Configure and build with CMake; returns the libraries that now exist. Raises DepruneError on failure."""
    if shutil.which("cmake") is None:
        raise DepruneError("cmake not found on PATH; install CMake >= 3.24 to build the plugin")
    build = Path(build_dir) if build_dir else DEFAULT_BUILD_DIR
    include = find_tensorrt_include(tensorrt_include)
    _run(cmake_configure_command(build, include, cuda=cuda, cuda_architectures=cuda_architectures,
                                 warnings_as_errors=warnings_as_errors), "cmake configure")
    command = ["cmake", "--build", str(build), "--parallel", str(jobs or os.cpu_count() or 2)]
    for target in targets or []:
        command += ["--target", target]
    _run(command, "cmake build")
    return built_libraries(build)


def built_libraries(build_dir: str | os.PathLike[str] | None = None) -> BuildResult:
    """Which libraries a build folder holds."""
    build = Path(build_dir) if build_dir else DEFAULT_BUILD_DIR

    def existing(kind: str) -> Path | None:
        path = build / LIBRARY_FILES[kind]
        return path.resolve() if path.is_file() else None

    return BuildResult(build, existing("kernels"), existing("plugin"), existing("dynamic"))


def plugin_library(kind: str = "plugin", build_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of a built library: $DEPRUNE_TRT_PLUGIN for kind 'plugin' when set, else the build folder's file."""
    if kind not in LIBRARY_FILES:
        raise DepruneError(f"unknown library kind '{kind}' (one of {', '.join(LIBRARY_FILES)})")
    override = os.environ.get(PLUGIN_ENV)
    if kind == "plugin" and override:
        path = Path(override)
        if not path.is_file():
            raise DepruneError(f"{path}: ${PLUGIN_ENV} names no file")
        return path.resolve()
    path = getattr(built_libraries(build_dir), kind)
    if path is None:
        where = Path(build_dir) if build_dir else DEFAULT_BUILD_DIR
        hint = " --tensorrt-include DIR" if kind != "kernels" else ""
        raise DepruneError(f"{where / LIBRARY_FILES[kind]}: not built yet; run "
                           f"`deprune-onnx build-plugin{hint}` first")
    return path
