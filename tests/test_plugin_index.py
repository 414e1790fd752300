"""The kernel's index arithmetic (drSparseDwConvIndex.h, compiled by g++) against the numpy oracle.

drdw_host_tool `conv` runs the kernel's algorithm block by block on the host, from the same launch plan and the
same __host__ __device__ functions (tap decode, tile origin, halo, bounds, K-tile ranges, activation). Its staged
tiles of skipped channels and its output start as NaN, so reading a channel with no kept tap, or missing an
output, fails here as surely as a wrong index does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from support.plugin_native import (build_test_native, op_fields, pack_layer, random_keep_mask, real_dw_layers,
                            reference_dw_conv, run_tool, write_field_file)


@pytest.fixture(scope="module")
def build_dir() -> Path:
    return build_test_native()


def run_emulated_conv(build_dir: Path, tmp_path: Path, x: np.ndarray, fields: list, sms: int,
                      out_shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    field_path, x_path, y_path = tmp_path / "f.bin", tmp_path / "x.bin", tmp_path / "y.bin"
    write_field_file(field_path, fields)
    x.astype(np.float32).tofile(x_path)
    n, _, h, w = x.shape
    result = run_tool(build_dir, "conv", field_path, x_path, n, h, w, y_path, sms)
    assert result.returncode == 0, result.stderr
    return np.fromfile(y_path, dtype=np.float32).reshape(out_shape), result.stdout


def max_rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    assert not np.isnan(y).any(), "an output was never written (or a skipped channel was read)"
    return float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-6))


def test_every_real_dw_layer_matches_numpy(build_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for number, layer in enumerate(real_dw_layers()):
        keep = random_keep_mask(layer.weight, (0.3, 0.5, 1.0)[number % 3], seed=number)
        packed = pack_layer(layer.weight, layer.bias, keep)
        kernel = tuple(layer.weight.shape[2:])
        c_in = layer.input_shape[1]
        x = rng.standard_normal(layer.input_shape).astype(np.float32)
        activation, params = (("clip", (0.0, 6.0)), ("hard_swish", (1 / 6, 0.5)), ("none", ()))[number % 3]
        fields = op_fields(packed, channels=c_in, kernel=kernel, strides=layer.strides, pads=layer.pads,
                           dilations=layer.dilations, activation=activation, activation_params=params)
        # Half of the layers with the batch-1 channel slicing of a 132-SM GPU, half with whole sub-GEMMs.
        y, _ = run_emulated_conv(build_dir, tmp_path, x, fields, 132 if number % 2 else 0, layer.output_shape)
        ref = reference_dw_conv(x, np.where(keep, layer.weight, 0), layer.bias, strides=layer.strides,
                                pads=layer.pads, dilations=layer.dilations, activation=activation,
                                activation_params=params)
        assert max_rel_err(y, ref) <= 1e-5, f"{layer.model}/{layer.name}"


@pytest.mark.parametrize("case", [
    dict(c=40, k=(5, 5), s=(2, 1), p=(2, 1, 3, 0), d=(1, 2), m=1, act="silu", params=(), hw=(13, 17), n=2),
    dict(c=24, k=(7, 7), s=(1, 1), p=(3, 3, 3, 3), d=(1, 1), m=2, act="relu", params=(), hw=(9, 40), n=1,
         bias=False),
    dict(c=70, k=(3, 3), s=(2, 2), p=(0, 0, 1, 1), d=(2, 2), m=1, act="hard_swish", params=(0.2, 0.5), hw=(15, 15),
         n=3),
    dict(c=8, k=(15, 3), s=(1, 2), p=(7, 1, 7, 1), d=(1, 1), m=3, act="clip", params=(-1.0, 1.0), hw=(20, 6), n=1,
         bias=False),
    dict(c=36, k=(3, 5), s=(2, 1), p=(1, 2, 0, 2), d=(2, 1), m=1, act="none", params=(), hw=(11, 9), n=2),
    dict(c=33, k=(1, 1), s=(1, 1), p=(0, 0, 0, 0), d=(1, 1), m=1, act="none", params=(), hw=(3, 70), n=1),
])
@pytest.mark.parametrize("sms", [0, 132])
def test_conv_attributes_match_numpy(build_dir: Path, tmp_path: Path, case: dict, sms: int) -> None:
    rng = np.random.default_rng(len(tmp_path.name))
    c_out = case["c"] * case["m"]
    weight = rng.standard_normal((c_out, 1, *case["k"])).astype(np.float32)
    keep = random_keep_mask(weight, 0.4, seed=c_out)
    bias = rng.standard_normal(c_out).astype(np.float32) if case.get("bias", True) else None
    packed = pack_layer(weight, bias, keep)
    x = rng.standard_normal((case["n"], case["c"], *case["hw"])).astype(np.float32)
    ref = reference_dw_conv(x, np.where(keep, weight, 0), bias, strides=case["s"], pads=case["p"],
                            dilations=case["d"], depth_multiplier=case["m"], activation=case["act"],
                            activation_params=case["params"])
    fields = op_fields(packed, channels=case["c"], kernel=case["k"], strides=case["s"], pads=case["p"],
                       dilations=case["d"], depth_multiplier=case["m"], activation=case["act"],
                       activation_params=case["params"])
    y, stdout = run_emulated_conv(build_dir, tmp_path, x, fields, sms, ref.shape)
    assert max_rel_err(y, ref) <= 1e-5, stdout


def test_fully_pruned_channels_write_activation_of_bias(build_dir: Path, tmp_path: Path) -> None:
    weight = np.ones((32, 1, 3, 3), np.float32)
    keep = np.zeros(weight.shape, bool)
    keep[5, 0, 1, 1] = True  # one kept tap in the whole sub-GEMM: K_g = 1 padded to a tile of 32
    bias = np.linspace(-3, 3, 32).astype(np.float32)
    packed = pack_layer(weight, bias, keep)
    x = np.full((1, 32, 6, 6), 2.0, np.float32)
    y, _ = run_emulated_conv(build_dir, tmp_path, x, op_fields(packed, channels=32, kernel=(3, 3), pads=(1, 1, 1, 1),
                                                               activation="relu"), 0, (1, 32, 6, 6))
    expected = np.maximum(np.broadcast_to(bias[None, :, None, None], y.shape), 0).copy()
    expected[0, 5] = max(2.0 + bias[5], 0)
    np.testing.assert_array_equal(y, expected)
