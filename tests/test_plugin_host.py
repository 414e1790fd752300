"""Host core of the DRSparseDepthwiseConv plugin (g++ only): C++ unit tests, packed fields written by the Python
packer read back through a file, output shapes equal to ONNX shape inference on every DW layer of the real models,
and exact re-serialization (what getFieldsToSerialize stores in an engine)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from support.plugin_native import (build_test_native, op_fields, pack_layer, random_keep_mask, read_field_file,
                            real_dw_layers, run_tool, write_field_file)

pytestmark = pytest.mark.native

SPEC_PATH = Path(__file__).resolve().parents[1] / "trt_plugins/dr_sparse_dwconv/DRSparseDepthwiseConv_PluginConfig.yaml"


@pytest.fixture(scope="module")
def build_dir() -> Path:
    return build_test_native()


def test_cpp_names_and_defaults_follow_the_yaml_spec(build_dir: Path) -> None:
    """The C++ side's plugin identity, creator field names (in spec order) and Params defaults are the YAML's."""
    import yaml  # noqa: PLC0415 - the test extra's pyyaml parses the op spec
    config = yaml.safe_load(SPEC_PATH.read_text())
    result = run_tool(build_dir, "spec")
    assert result.returncode == 0, result.stderr
    cpp = json.loads(result.stdout)
    assert cpp["name"] == config["name"]
    assert cpp["namespace"] == config["domain"] == config["attributes"]["plugin_namespace"]["default"]
    assert cpp["version"] == str(config["version"]) == config["attributes"]["plugin_version"]["default"]
    # The creator advertises every attribute but the two that only route the ONNX parser to the plugin.
    assert cpp["fields"] == [name for name in config["attributes"] if not name.startswith("plugin_")]
    assert cpp["activations"] == config["attributes"]["activation"]["values"]
    spec_defaults = {name: entry["default"] for name, entry in config["attributes"].items()
                     if "default" in entry and not name.startswith("plugin_")}
    assert cpp["defaults"] == spec_defaults
    assert f"1..{cpp['max_kernel']}" in config["attributes"]["kernel_shape"]["description"]


def test_cpp_unit_tests_pass(build_dir: Path) -> None:
    result = subprocess.run([str(build_dir / "drdw_core_tests")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 0 failure(s)" in result.stdout


def test_output_shapes_match_onnx_shape_inference_on_real_models(build_dir: Path, tmp_path: Path) -> None:
    layers = real_dw_layers()
    assert len(layers) == 17 + 13 + 11
    for number, layer in enumerate(layers):
        keep = random_keep_mask(layer.weight, 0.5, seed=number)
        packed = pack_layer(layer.weight, layer.bias, keep)
        fields = tmp_path / f"{number}.bin"
        # Alternate INT32 (TensorRT 10 parser) and INT64 integers: both must decode identically.
        write_field_file(fields, op_fields(packed, channels=layer.input_shape[1], kernel=layer.weight.shape[2:],
                                           strides=layer.strides, pads=layer.pads, dilations=layer.dilations,
                                           int_type="int64" if number % 2 else "int32"))
        n, _, h, w = layer.input_shape
        result = run_tool(build_dir, "shape", fields, n, h, w)
        assert result.returncode == 0, f"{layer.model}/{layer.name}: {result.stderr}"
        lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
        assert tuple(int(v) for v in lines["output"].split()) == layer.output_shape, f"{layer.model}/{layer.name}"
        assert lines["workspace"] == "0"
        assert lines["subgemms"].split()[0] == str(len(packed.kept_counts))


def test_reserialized_fields_equal_the_packed_ones(build_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((40, 1, 5, 5)).astype(np.float32)
    packed = pack_layer(weight, rng.standard_normal(40).astype(np.float32), random_keep_mask(weight, 0.3, 1))
    source = tmp_path / "in.bin"
    write_field_file(source, op_fields(packed, channels=40, kernel=(5, 5), strides=(2, 1), pads=(2, 1, 2, 3),
                                       dilations=(1, 2), activation="hard_swish", activation_params=(1 / 6, 0.5),
                                       int_type="int64", value_type="float16"))
    result = run_tool(build_dir, "reserialize", source, tmp_path / "out.bin")
    assert result.returncode == 0, result.stderr
    back = read_field_file(tmp_path / "out.bin")
    np.testing.assert_array_equal(back["tap_indices"][1], packed.tap_indices)
    np.testing.assert_array_equal(back["kept_counts"][1], packed.kept_counts)
    # float16 tap values are widened exactly to float32 for the engine.
    np.testing.assert_array_equal(back["tap_values"][1], packed.tap_values.astype(np.float16).astype(np.float32))
    assert back["activation"][1] == "hard_swish"
    assert list(back["pads"][1]) == [2, 1, 2, 3] and list(back["dilations"][1]) == [1, 2]
    np.testing.assert_allclose(back["activation_params"][1], [1 / 6, 0.5], rtol=1e-7)


@pytest.mark.parametrize("corrupt, message", [
    (lambda f: f[11][2].__setitem__(-1, f[11][2][-1] - 1), "padding must repeat"),
    (lambda f: f.__setitem__(8, ("activation", "char", "gelu")), "unknown activation 'gelu'"),
    (lambda f: f.__setitem__(13, ("bias", "float32", np.zeros(3))), "expected C_out = 40"),
    (lambda f: f.pop(11), "'tap_indices': required field is missing"),
])
def test_invalid_fields_are_rejected_with_one_line(build_dir: Path, tmp_path: Path, corrupt, message: str) -> None:
    weight = np.random.default_rng(0).standard_normal((40, 1, 3, 3)).astype(np.float32)
    fields = op_fields(pack_layer(weight, None, random_keep_mask(weight, 0.5, 0)), channels=40, kernel=(3, 3))
    fields = [(name, kind, value.copy() if isinstance(value, np.ndarray) else value) for name, kind, value in fields]
    corrupt(fields)
    path = tmp_path / "bad.bin"
    write_field_file(path, fields)
    result = run_tool(build_dir, "shape", path, 1, 8, 8)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
