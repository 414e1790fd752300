"""build-plugin / plugin-path / build-engine: one-line errors and exit code 2 where something is missing."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from support.cli_testing import assert_one_line_error, run_cli as invoke
from deprune_onnx.errors import DepruneError
from deprune_onnx.trt import engine

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "mobilenet_v2_torchvision.onnx"


def test_help_texts_have_examples() -> None:
    for command in ("build-plugin", "plugin-path", "build-engine"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output


def test_plugin_path_reports_a_missing_build(tmp_path: Path) -> None:
    assert_one_line_error(invoke("plugin-path", "--build-dir", str(tmp_path), env={"DEPRUNE_TRT_PLUGIN": ""}),
                          "not built yet")


def test_plugin_path_prints_the_built_library(tmp_path: Path) -> None:
    (tmp_path / "libdeprune_trt_dynamic.so").write_bytes(b"")
    result = invoke("plugin-path", "--kind", "dynamic", "--build-dir", str(tmp_path))
    assert result.exit_code == 0 and result.output.strip() == str((tmp_path / "libdeprune_trt_dynamic.so").resolve())
    override = tmp_path / "custom.so"
    override.write_bytes(b"")
    result = invoke("plugin-path", env={"DEPRUNE_TRT_PLUGIN": str(override)})
    assert result.output.strip() == str(override.resolve())


def test_build_plugin_rejects_a_folder_without_tensorrt_headers(tmp_path: Path) -> None:
    assert_one_line_error(invoke("build-plugin", "--tensorrt-include", str(tmp_path)), "no NvInferRuntime.h")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_is_one_line(tmp_path: Path) -> None:
    result = invoke("build-engine", str(SAMPLE), "-o", str(tmp_path / "m.engine"))
    assert_one_line_error(result, "TensorRT Python package not available")
    assert not (tmp_path / "m.engine").exists()


def test_build_engine_checks_its_paths_first(tmp_path: Path) -> None:
    assert_one_line_error(invoke("build-engine", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "e")),
                          "no such file")
    assert_one_line_error(invoke("build-engine", str(SAMPLE), "-o", str(tmp_path / "missing" / "e")),
                          "does not exist")


def test_parse_shapes() -> None:
    assert engine.parse_shapes("input:1x3x224x224, other:4x10", "--min-shapes") == {
        "input": (1, 3, 224, 224), "other": (4, 10)}
    assert engine.parse_shapes(None, "--opt-shapes") == {}
    for bad in ("input", "input:1x3xa", ":1x3", "input:-1x3"):
        with pytest.raises(DepruneError, match="--max-shapes"):
            engine.parse_shapes(bad, "--max-shapes")


def test_missing_driver_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver(name: str):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(engine.ctypes, "CDLL", no_driver)
    with pytest.raises(DepruneError, match="no NVIDIA driver"):
        engine.check_cuda_device()


def test_count_custom_nodes(tmp_path: Path) -> None:
    nodes = [helper.make_node("DRSparseDepthwiseConv", ["x"], ["y"], domain="deprune", channels=2),
             helper.make_node("Relu", ["y"], ["z"]),
             helper.make_node("DRSparseDepthwiseConv", ["z"], ["w"], domain="other")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("deprune", 1)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert engine.count_custom_nodes(path) == 1
    path.write_bytes(np.arange(10, dtype=np.uint8).tobytes())
    with pytest.raises(DepruneError, match="not a valid ONNX model"):
        engine.count_custom_nodes(path)
