"""`build-plugin` from an installed wheel (not a source checkout), and its exit code without TensorRT headers.

Issue #12: the wheel carries CMakeLists.txt and trt_plugins/ as package data (deprune_onnx/native_src), so an
installed package builds the kernel library; without TensorRT headers build-plugin builds that library, notes
what it did not build and exits 0 (bench needs only the kernel library).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from deprune_onnx.trt import native
from deprune_onnx.trt.native import KERNEL_C_ABI, LIBRARY_FILES, BuildResult
from support.cli_testing import assert_one_line_error, run_cli
from support.plugin_native import has_nvcc
from support.samples import REPO

# What a wheel is built from: the files pyproject.toml packages (no tests, samples or build output).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "CMakeLists.txt", "deprune_onnx", "cli", "trt_plugins")


def test_without_tensorrt_headers_the_kernel_library_is_a_success(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = tmp_path / LIBRARY_FILES["kernels"]
    monkeypatch.setattr(native, "build_native", lambda *args, **kwargs: BuildResult(tmp_path, kernels, None, None))
    monkeypatch.delenv("DEPRUNE_TRT_INCLUDE", raising=False)
    monkeypatch.delenv("TensorRT_INCLUDE_DIR", raising=False)
    result = run_cli("build-plugin", "--build-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # nothing a `--plugins $(deprune-onnx build-plugin)` could take for the plugin
    assert str(kernels) in result.stderr and "libdeprune_trt.so" in result.stderr and "not built" in result.stderr
    monkeypatch.setattr(native, "build_native", lambda *args, **kwargs: BuildResult(tmp_path, None, None, None))
    assert_one_line_error(run_cli("build-plugin", "--build-dir", tmp_path), "nvcc (CUDA toolkit) not found")


def _dependency_paths() -> list[str]:
    """This interpreter's site-packages (numpy, onnx, ...), for the fresh venv. A path listed in a .pth file is
    only appended to sys.path, its own .pth files are not run, so the editable install of the checkout that
    this site-packages may hold stays inactive."""
    return [path for path in site.getsitepackages() if Path(path).resolve() != REPO]


@pytest.mark.native
@pytest.mark.skipif(not has_nvcc(), reason="nvcc not found: the CUDA kernel library cannot be built")
def test_installed_wheel_builds_the_kernel_library(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in WHEEL_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("deprune_onnx-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    subprocess.run(pip + ["--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", wheel],
                   check=True, capture_output=True)
    shutil.rmtree(source)  # the installed package must not need the tree it was built from
    # The venv's own site-packages holds deprune-onnx; its dependencies come from this interpreter's.
    venv_site = next((venv / "lib").glob("python3*/site-packages"))
    (venv_site / "zz_dependencies.pth").write_text("\n".join(_dependency_paths()) + "\n")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "DEPRUNE_TRT_INCLUDE", "TensorRT_INCLUDE_DIR", "DEPRUNE_TRT_PLUGIN")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "deprune-onnx"), *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=1200)

    where = subprocess.run([venv / "bin" / "python", "-c", "import deprune_onnx; print(deprune_onnx.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv_site), where
    built = run("build-plugin", "--cuda-arch", "75-real", "-j", "2")
    assert built.returncode == 0, built.stderr
    assert built.stdout == "" and "were not built" in built.stderr
    library = tmp_path / "cache" / "deprune-onnx" / "native" / LIBRARY_FILES["kernels"]
    assert library.is_file() and str(library) in built.stderr
    located = run("plugin-path", "--kind", "kernels")
    assert located.returncode == 0 and located.stdout.strip() == str(library)
    handle = ctypes.CDLL(str(library))
    assert all(hasattr(handle, symbol) for symbol in KERNEL_C_ABI)
    assert not list(work.iterdir()) and not (venv_site / "deprune_onnx" / "native_src" / "build").exists()
