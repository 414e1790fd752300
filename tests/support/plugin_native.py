"""Helpers shared by tests/test_plugin_*.py: the native test build, field files and DW layers of the real models
(the op's numpy reference is deprune_onnx/op/oracle.py).

The native build (CMake, g++ always, nvcc when present, the TensorRT plugin when $DEPRUNE_TRT_INCLUDE names
TensorRT headers) goes to build/test-native, one CUDA architecture only so CI stays fast; the release build of
`deprune-onnx build-plugin` is the fat binary.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from deprune_onnx.op.activations import apply_activation
from deprune_onnx.op.packing import PackedDR, pack_dr_weights
from support.samples import SAMPLES_DIR
from deprune_onnx.trt.emulated import write_field_file  # noqa: F401 - re-exported for tests/test_plugin_*.py
from deprune_onnx.trt.native import SOURCE_ROOT, build_native, find_tensorrt_include

TEST_BUILD_DIR = SOURCE_ROOT / "build" / "test-native"
# Static input sizes of the real models (the PP-OCR classifier's graph leaves H/W symbolic).
MODEL_INPUTS = {
    "mobilenet_v2_torchvision.onnx": (1, 3, 224, 224),
    "pplcnet_x1_0_doc_orientation_rapid.onnx": (1, 3, 224, 224),
    "ppocr_mobile_v2_cls_mobilenetv3_small.onnx": (1, 3, 48, 192),
}


def has_nvcc() -> bool:
    return shutil.which("nvcc") is not None or bool(os.environ.get("CUDACXX"))


def build_test_native() -> Path:
    """Build everything this machine can build (incremental), with warnings as errors; return the build folder."""
    include = find_tensorrt_include(None)
    build_native(TEST_BUILD_DIR, include, cuda=has_nvcc(), cuda_architectures="75-real", jobs=2,
                 warnings_as_errors=True)
    return TEST_BUILD_DIR


@dataclass(frozen=True)
class DwLayer:
    """One depthwise Conv of a real model with its shapes from ONNX shape inference."""

    model: str
    name: str
    weight: np.ndarray  # [C_out, 1, kh, kw]
    bias: np.ndarray | None
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    input_shape: tuple[int, int, int, int]
    output_shape: tuple[int, int, int, int]


def _with_static_input(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    inferred = onnx.ModelProto()
    inferred.CopyFrom(model)
    del inferred.graph.value_info[:]  # stale symbolic shapes (PP-OCR) would otherwise win over inference
    dims = inferred.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, shape):
        dim.Clear()
        dim.dim_value = value
    return shape_inference.infer_shapes(inferred)


def real_dw_layers() -> list[DwLayer]:
    """Every DW conv (group == C_in, weight [C_out, 1, kh, kw]) of the real sample models."""
    layers = []
    for file_name, input_shape in MODEL_INPUTS.items():
        model = _with_static_input(onnx.load(str(SAMPLES_DIR / file_name)), input_shape)
        inits = {t.name: t for t in model.graph.initializer}
        shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
                  for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
        for node in model.graph.node:
            if node.op_type != "Conv" or node.input[1] not in inits:
                continue
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            weight = numpy_helper.to_array(inits[node.input[1]])
            if attrs.get("group", 1) == 1 or weight.shape[1] != 1 or attrs["group"] != shapes[node.input[0]][1]:
                continue
            bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
            layers.append(DwLayer(file_name, node.name or node.output[0], weight, bias,
                                  tuple(attrs.get("strides", [1, 1])), tuple(attrs.get("pads", [0, 0, 0, 0])),
                                  tuple(attrs.get("dilations", [1, 1])), shapes[node.input[0]],
                                  shapes[node.output[0]]))
    return layers


def random_keep_mask(weight: np.ndarray, keep_ratio: float, seed: int) -> np.ndarray:
    """Random kept taps, plus every 7th channel fully pruned (those must cost only their output write)."""
    rng = np.random.default_rng(seed)
    keep = rng.random(weight.shape) < keep_ratio
    keep[::7] = False
    return keep


def read_field_file(path: Path) -> dict[str, tuple[int, np.ndarray | str]]:
    """Inverse of write_field_file (for checking what the C++ side serialized)."""
    blob = path.read_bytes()
    assert blob[:8] == b"DRDWFLD1"
    (count,), offset = struct.unpack_from("<I", blob, 8), 12
    out: dict[str, tuple[int, np.ndarray | str]] = {}
    dtypes = {0: np.float16, 1: np.float32, 5: np.int32, 10: np.int64}
    for _ in range(count):
        (name_len,) = struct.unpack_from("<I", blob, offset)
        name = blob[offset + 4:offset + 4 + name_len].decode()
        offset += 4 + name_len
        kind, length, nbytes = struct.unpack_from("<iiQ", blob, offset)
        offset += 16
        data = blob[offset:offset + nbytes]
        offset += nbytes
        out[name] = (kind, data.rstrip(b"\0").decode() if kind == 6 else np.frombuffer(data, dtypes[kind]).copy())
    return out


def op_fields(packed: PackedDR, *, channels: int, kernel: tuple[int, int], strides=(1, 1), pads=(0, 0, 0, 0),
              dilations=(1, 1), depth_multiplier: int = 1, activation: str = "none",
              activation_params: tuple[float, ...] = (), int_type: str = "int32",
              value_type: str = "float32", subgemm_channels: int = 32, k_tile: int = 32) -> list:
    """The node attributes as the parser hands them over; ``int_type`` int64 mimics newer parsers."""
    return [
        ("channels", int_type, np.array([channels])),
        ("depth_multiplier", int_type, np.array([depth_multiplier])),
        ("kernel_shape", int_type, np.array(kernel)),
        ("strides", int_type, np.array(strides)),
        ("pads", int_type, np.array(pads)),
        ("dilations", int_type, np.array(dilations)),
        ("subgemm_channels", int_type, np.array([subgemm_channels])),
        ("k_tile", int_type, np.array([k_tile])),
        ("activation", "char", activation),
        ("activation_params", "float32", np.array(activation_params)),
        ("kept_counts", "int32", packed.kept_counts),
        ("tap_indices", "int32", packed.tap_indices),
        ("tap_values", value_type, packed.tap_values),
        ("bias", value_type, packed.bias),
    ]


def run_tool(build_dir: Path, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(build_dir / "drdw_host_tool"), *map(str, args)], capture_output=True, text=True,
                          check=False)


def pack_layer(weight: np.ndarray, bias: np.ndarray | None, keep: np.ndarray) -> PackedDR:
    return pack_dr_weights(np.where(keep, weight, 0).astype(np.float32), bias, keep_mask=keep)


def dense_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, *, strides, pads, dilations,
                    depth_multiplier: int = 1, activation: str = "none",
                    activation_params: tuple[float, ...] = ()) -> np.ndarray:
    """numpy float64 Y = act(Conv(X, W, B, group=C_in)) on the DENSE masked weight W [C_out, 1, kh, kw] and the bias
    the test packed (None: no bias), never on anything rebuilt from the packed fields, so a packer bug (a dropped
    bias, a wrong tap index) cannot hide behind a reader that mirrors it."""
    c_out, _, kh, kw = weight.shape
    n, _, h, w = x.shape
    top, left, bottom, right = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    xp = np.repeat(xp, depth_multiplier, axis=1)  # output channel o reads input channel o // m
    ho = (h + top + bottom - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (w + left + right - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    w64 = weight.astype(np.float64)[:, 0]
    y = np.zeros((n, c_out, ho, wo))
    for ky in range(kh):
        for kx in range(kw):
            rows = slice(ky * dilations[0], ky * dilations[0] + (ho - 1) * strides[0] + 1, strides[0])
            cols = slice(kx * dilations[1], kx * dilations[1] + (wo - 1) * strides[1] + 1, strides[1])
            y += xp[:, :, rows, cols] * w64[None, :, ky, kx, None, None]
    if bias is not None:
        y += bias.astype(np.float64)[None, :, None, None]
    return apply_activation(y, activation, activation_params)
