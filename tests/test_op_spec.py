"""The Python side of DRSparseDepthwiseConv follows its PluginConfig YAML (names, types, defaults)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml  # the test extra (pyyaml)

from deprune_onnx.op import spec
from deprune_onnx.op.attributes import DRConvParams, encode_attributes
from deprune_onnx.op.packing import pack_dr_weights


SPEC_PATH = Path(__file__).resolve().parents[1] / "trt_plugins/dr_sparse_dwconv/DRSparseDepthwiseConv_PluginConfig.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def test_identity_constants(config):
    assert config["name"] == spec.OP_TYPE
    assert config["domain"] == spec.DOMAIN == spec.PLUGIN_NAMESPACE
    assert config["version"] == spec.OPSET_VERSION == int(spec.PLUGIN_VERSION)


def test_attribute_names_and_defaults(config):
    attributes = config["attributes"]
    assert set(attributes) == set(spec.ATTRIBUTE_DEFAULTS) | set(spec.REQUIRED_ATTRIBUTES)
    for name, default in spec.ATTRIBUTE_DEFAULTS.items():
        expected = attributes[name]["default"]
        assert (list(default) if isinstance(default, tuple) else default) == expected, name
    for name in ("channels", "kernel_shape"):
        assert attributes[name]["required"] is True
    assert tuple(attributes["activation"]["values"]) == spec.ACTIVATIONS == tuple(spec.ACTIVATION_PARAM_COUNTS)
    assert attributes["kept_counts"]["dtype"] == attributes["tap_indices"]["dtype"] == "int32"
    assert attributes["tap_values"]["dtype"] == ["float32", "float16"]


def test_node_builder_writes_the_spec_attributes_with_their_types(config):
    weight = np.arange(1, 2 * 9 + 1, dtype=np.float32).reshape(2, 1, 3, 3)
    params = DRConvParams(channels=2, kernel_shape=(3, 3), activation="clip", activation_params=(0.0, 6.0))
    attrs = encode_attributes(params, pack_dr_weights(weight))
    assert set(attrs) == set(config["attributes"])
    python_types = {"int": int, "string": str, "ints": list, "floats": list, "tensor": np.ndarray}
    for name, value in attrs.items():
        assert isinstance(value, python_types[config["attributes"][name]["type"]]), name
    # An empty activation_params (the default) is left out: ONNX cannot type an empty list attribute.
    plain = encode_attributes(DRConvParams(channels=2, kernel_shape=(3, 3)), pack_dr_weights(weight))
    assert set(config["attributes"]) - set(plain) == {"activation_params"}


def test_tolerances_are_declared(config):
    assert config["tolerances"]["float32"]["max_relative_error"] == pytest.approx(1e-5)
    assert config["tolerances"]["float16"]["max_relative_error"] == pytest.approx(1e-2)
    assert {dtype: entry["max_relative_error"] for dtype, entry in config["tolerances"].items()} \
        == spec.MAX_RELATIVE_ERROR
