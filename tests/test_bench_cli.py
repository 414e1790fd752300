"""`deprune-onnx bench` on a CPU-only machine: every missing piece is one line and exit code 2, in the order a
user meets them (model, then PyTorch, then a GPU, then the kernel library)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from support.cli_testing import assert_one_line_error, run_cli
from support.samples import SAMPLE_MODEL
from deprune_onnx.onnx_io.load_save import save_model
from deprune_onnx.trt.bench_models import pruned_dw_layers_model


def invoke(*args: str):
    return run_cli("bench", *args, env={"DEPRUNE_TRT_PLUGIN": ""})


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "v3_pruned.onnx"
    save_model(pruned_dw_layers_model("mobilenet_v3_small", 0.5), path)
    return path


def fake_torch(cuda: bool) -> types.ModuleType:
    """A stand-in `torch` module that only answers whether CUDA is available (to reach the later checks)."""
    module = types.ModuleType("torch")
    module.cuda = types.SimpleNamespace(is_available=lambda: cuda)
    return module


def test_help_has_an_example() -> None:
    result = invoke("--help")
    assert result.exit_code == 0 and "Example" in result.output and "--batch" in result.output


def test_model_errors_come_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    assert_one_line_error(invoke(str(tmp_path / "missing.onnx")), "no such file")
    assert_one_line_error(invoke(str(SAMPLE_MODEL)), "no DRSparseDepthwiseConv node")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    assert_one_line_error(invoke(str(tmp_path / "junk.onnx")), "junk.onnx")


def test_bad_batch(pruned: Path) -> None:
    assert_one_line_error(invoke(str(pruned), "--batch", "1,zero"), "--batch")


def test_without_torch(pruned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert_one_line_error(invoke(str(pruned)), "needs PyTorch")


def test_without_a_gpu(pruned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=False))
    assert_one_line_error(invoke(str(pruned)), "needs a CUDA GPU")


def test_without_the_kernel_library(pruned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=True))
    result = invoke(str(pruned), "--build-dir", str(tmp_path))
    assert_one_line_error(result, "libdeprune_drdw_kernels.so: not built yet; run `deprune-onnx build-plugin`")


def test_a_file_that_is_not_the_kernel_library(pruned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=True))
    (tmp_path / "libdeprune_drdw_kernels.so").write_bytes(b"not ELF")
    assert_one_line_error(invoke(str(pruned), "--build-dir", str(tmp_path)), "not a usable")
