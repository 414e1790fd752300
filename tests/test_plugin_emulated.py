"""The CUDA kernel's real device code, run on the CPU, against numpy on the dense masked weight and the bias
the test packed (support/plugin_native.py dense_reference; not the packed fields, issue #17).

drdw_emu_tool compiles drSparseDwConvDeviceV1.cuh and drSparseDwConvDeviceV2.cuh (kernel versions 1 and 2) unchanged
with g++ through the CUDA-on-CPU layer
(trt_plugins/dr_sparse_dwconv/tests/cudaOnCpu.h: fibers with block and warp barriers, shared memory starting as NaN
bytes, a software __half) and launches it with the plugin's own launch plan; the output starts as NaN. So shared-
memory layout, barriers, the lane mapping and the float16 path are all executed, and a missing write, a read of a
slot nothing staged, an out-of-bounds global access (the tool aborts) or a deadlock fails here.

Cases: every DW layer of the three sample models (random DEPrune-like masks, the activations the op fuses) and
generated shapes (kernel 1-15, square or not, stride 1-2, dilation, depth multiplier 2-3, asymmetric pads,
partial sub-GEMMs, K_g = 0, no bias, batch 1-4), float32 and float16, kernel versions 1 and 2. CI runs a
deterministic subset of them (every case whose index is congruent to $DEPRUNE_EMU_SHARD modulo 3, default 0);
DEPRUNE_EMU_ALL=1 runs every case.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deprune_onnx.op import spec
from deprune_onnx.op.activations import HARD_SWISH_PARAMS
from deprune_onnx.op.attributes import DRConvParams
from deprune_onnx.op.packing import PackedDR
from deprune_onnx.trt.emulated import build_emulator, run_emulated, traffic_report
from deprune_onnx.trt.layer_bench import BenchLayer
from deprune_onnx.trt.native import SOURCE_ROOT
from support.plugin_native import dense_reference, pack_layer, random_keep_mask, real_dw_layers

pytestmark = pytest.mark.native

ACTIVATIONS = [("clip", (0.0, 6.0)), ("hard_swish", HARD_SWISH_PARAMS), ("relu", ()), ("silu", ()), ("none", ())]
RUN_ALL = os.environ.get("DEPRUNE_EMU_ALL") == "1"
SHARD = int(os.environ.get("DEPRUNE_EMU_SHARD", "0"))
# layer name -> (dense masked weight, bias or None) as the test made them: the reference's inputs
DENSE: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}


@pytest.fixture(scope="module")
def tool() -> Path:
    return build_emulator(SOURCE_ROOT / "build" / "test-emulated")


def make_layer(name: str, weight: np.ndarray, bias: np.ndarray | None, keep: np.ndarray, *, channels: int, hw: tuple,
               strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), multiplier: int = 1,
               activation=("none", ())) -> BenchLayer:
    params = DRConvParams(channels=channels, kernel_shape=tuple(weight.shape[2:]), depth_multiplier=multiplier,
                          strides=tuple(strides), pads=tuple(pads), dilations=tuple(dilations),
                          activation=activation[0], activation_params=tuple(activation[1]))
    DENSE[name] = (np.where(keep, weight, 0).astype(np.float32), bias)
    return BenchLayer(name, params, pack_layer(weight, bias, keep), hw[0], hw[1])


def in_dtype(layer: BenchLayer, dtype: str) -> BenchLayer:
    """The layer as a model of ``dtype`` stores it (float16 taps and bias for a float16 model)."""
    p = layer.packed
    packed = PackedDR(p.kept_counts, p.tap_indices, p.tap_values.astype(dtype), p.bias.astype(dtype))
    return BenchLayer(layer.name, layer.params, packed, layer.height, layer.width)


def check_against_dense_reference(tool: Path, layer: BenchLayer, batch: int, dtype: str, seed: int, sms: int = 132,
                         variant: int = 1):
    layer = in_dtype(layer, dtype)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, layer.params.channels, layer.height, layer.width)).astype(dtype)
    run = run_emulated(tool, layer, x, sms=sms, variant=variant)
    assert run.variant == variant, f"{layer.name}: version {variant} fell back to {run.variant}"
    assert not np.isnan(run.y).any(), f"{layer.name} {dtype}: an output was never written (or read an unstaged slot)"
    weight, bias = DENSE[layer.name]
    p = layer.params
    reference = dense_reference(x, weight.astype(dtype), None if bias is None else bias.astype(dtype),
                                strides=p.strides, pads=p.pads, dilations=p.dilations,
                                depth_multiplier=p.depth_multiplier, activation=p.activation,
                                activation_params=p.activation_params)
    error = np.abs(run.y.astype(np.float64) - reference).max() / max(np.abs(reference).max(), 1e-30)
    assert error <= spec.MAX_RELATIVE_ERROR[dtype], f"{layer.name} {dtype}: max relative error {error:.2e}"
    return run, layer


def real_layers() -> list[BenchLayer]:
    layers = []
    for number, real in enumerate(real_dw_layers()):
        keep = random_keep_mask(real.weight, (0.3, 0.5, 1.0)[number % 3], seed=number)
        bias = real.bias if real.bias is not None else np.zeros(real.weight.shape[0], np.float32)
        layers.append(make_layer(f"{real.model}/{real.name}", real.weight, bias, keep, channels=real.input_shape[1],
                                 hw=real.input_shape[2:], strides=real.strides, pads=real.pads,
                                 dilations=real.dilations, activation=ACTIVATIONS[number % len(ACTIVATIONS)]))
    return layers


# (channels, kernel, strides, pads, dilations, multiplier, input hw, batch, keep ratio)
GENERATED = [
    (40, (5, 5), (2, 1), (2, 1, 3, 0), (1, 2), 1, (13, 17), 2, 0.4),
    (24, (7, 7), (1, 1), (3, 3, 3, 3), (1, 1), 2, (9, 40), 1, 0.4),
    (70, (3, 3), (2, 2), (0, 0, 1, 1), (2, 2), 1, (15, 15), 3, 0.4),
    (8, (15, 3), (1, 2), (7, 1, 7, 1), (1, 1), 2, (20, 6), 1, 0.6),
    (33, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, (3, 70), 1, 0.7),
    (64, (15, 15), (1, 1), (7, 7, 7, 7), (1, 1), 1, (16, 16), 1, 0.2),
    (48, (9, 9), (2, 2), (4, 4, 4, 4), (1, 1), 1, (23, 23), 4, 0.3),
    (96, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1, (14, 14), 2, 1.0),
    (20, (11, 11), (2, 1), (5, 5, 5, 5), (1, 1), 2, (12, 30), 2, 0.5),
    (160, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (7, 7), 4, 0.5),
    (36, (13, 13), (1, 2), (6, 6, 6, 6), (1, 1), 1, (10, 10), 1, 0.3),
    (72, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 1, (7, 7), 3, 0.0),  # K_g = 0 everywhere: act(bias) only
    (36, (3, 5), (2, 1), (1, 2, 0, 2), (2, 1), 1, (11, 9), 2, 0.4),  # non-square kernel, asymmetric everything
    (24, (7, 1), (1, 1), (3, 0, 3, 0), (1, 1), 3, (12, 5), 1, 0.5),  # 7x1, depth multiplier 3
]
NO_BIAS = {1, 3, 13}  # cases whose layer has no bias (the packer writes zeros)


def generated_layers() -> list[BenchLayer]:
    layers = []
    for number, (c, kernel, strides, pads, dilations, m, hw, _, ratio) in enumerate(GENERATED):
        rng = np.random.default_rng(100 + number)
        weight = rng.standard_normal((c * m, 1, *kernel)).astype(np.float32)
        keep = random_keep_mask(weight, ratio, seed=number)
        if number % 4 == 1:
            keep[32:64] = False  # one whole sub-GEMM with K_g = 0 next to kept ones
        bias = None if number in NO_BIAS else rng.standard_normal(c * m).astype(np.float32)
        layers.append(make_layer(f"generated{number}", weight, bias, keep,
                                 channels=c, hw=hw, strides=strides, pads=pads, dilations=dilations, multiplier=m,
                                 activation=ACTIVATIONS[number % len(ACTIVATIONS)]))
    return layers


def selected(cases: list) -> list:
    return cases if RUN_ALL else [case for index, case in enumerate(cases) if index % 3 == SHARD % 3]


def real_cases() -> list:
    layers = real_layers()
    return selected([pytest.param(index, dtype, variant, id=f"{layer.name}-{dtype}-v{variant}")
                     for index, layer in enumerate(layers) for dtype in ("float32", "float16") for variant in (1, 2)])


def generated_cases() -> list:
    return selected([pytest.param(index, dtype, variant, id=f"generated{index}-{dtype}-v{variant}")
                     for index in range(len(GENERATED)) for dtype in ("float32", "float16") for variant in (1, 2)])


@pytest.fixture(scope="module")
def real() -> list[BenchLayer]:
    return real_layers()


@pytest.mark.parametrize(("index", "dtype", "variant"), real_cases())
def test_real_dw_layer_equals_the_dense_reference(tool: Path, real: list[BenchLayer], index: int, dtype: str,
                                         variant: int) -> None:
    # Odd layers with the batch-1 channel slicing of a 132-SM GPU, even ones with whole sub-GEMMs (smCount 0).
    check_against_dense_reference(tool, real[index], 1, dtype, seed=index, sms=132 if index % 2 else 0, variant=variant)


@pytest.mark.parametrize(("index", "dtype", "variant"), generated_cases())
def test_generated_shape_equals_the_dense_reference(tool: Path, index: int, dtype: str, variant: int) -> None:
    layer = generated_layers()[index]
    check_against_dense_reference(tool, layer, GENERATED[index][7], dtype, seed=index, sms=(0, 132)[index % 2],
                         variant=variant)


def test_the_real_cases_cover_every_sample_model(real: list[BenchLayer]) -> None:
    models = {layer.name.split("/")[0] for layer in real}
    assert len(models) == 3 and len(real) >= 30
    kernels = {layer.params.kernel_shape for layer in real + generated_layers()}
    assert {(3, 3), (5, 5), (15, 15), (1, 1)} <= kernels


def test_traffic_of_a_dense_layer(tool: Path) -> None:
    # Dense 3x3 stride 1 (MobileNetV2-like, 96 channels 14x14, batch 2): every output written exactly once, the
    # input read with only the halo overhead, warp requests of a few 32-byte sectors.
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((96, 1, 3, 3)).astype(np.float32)
    layer = make_layer("dense", weight, rng.standard_normal(96).astype(np.float32), np.ones(weight.shape, bool),
                       channels=96, hw=(14, 14), pads=(1, 1, 1, 1), activation=("clip", (0.0, 6.0)))
    run, stored = check_against_dense_reference(tool, layer, 2, "float32", seed=1)
    report = traffic_report(stored, 2, "float32", run)
    y, x = run.traffic["y"]["stores"], run.traffic["x"]["loads"]
    assert y["bytes"] == 2 * 96 * 14 * 14 * 4 and y["unique_sectors"] * 32 == y["bytes"]
    assert x["unique_sectors"] * 32 == 2 * 96 * 14 * 14 * 4  # a perfect L2 would read the input exactly once
    assert report["floor_bytes"] == x["unique_sectors"] * 32 + y["bytes"]
    assert report["dram_bytes_perfect_l2"] == report["floor_bytes"]
    assert 1.0 < report["requested_x_floor"] < 2.0  # halo re-reads between tiles
    assert 1.0 <= report["x_sectors_per_request"] <= 8.0


def test_version_2_requests_less_and_keeps_more_in_flight(tool: Path) -> None:
    # The same dense stride-2 layer (MobileNetV2's 96x112x112 shape, cut to 24 channels) through both versions:
    # v2 re-reads fewer halo bytes and has far more input bytes in flight per SM (asynchronous whole-tile staging).
    rng = np.random.default_rng(8)
    weight = rng.standard_normal((24, 1, 3, 3)).astype(np.float32)
    layer = make_layer("s2", weight, rng.standard_normal(24).astype(np.float32), np.ones(weight.shape, bool),
                       channels=24, hw=(112, 112), strides=(2, 2), pads=(1, 1, 1, 1), activation=("clip", (0.0, 6.0)))
    reports = {}
    for variant in (1, 2):
        run, stored = check_against_dense_reference(tool, layer, 1, "float32", seed=3, variant=variant)
        reports[variant] = traffic_report(stored, 1, "float32", run)
    assert reports[2]["requested_bytes"] < reports[1]["requested_bytes"]
    assert reports[2]["bytes_in_flight_per_sm"] > 4 * reports[1]["bytes_in_flight_per_sm"]
    assert reports[2]["bytes_in_flight_per_sm"] > reports[2]["needed_in_flight_per_sm"]
    assert reports[2]["y_sector_efficiency"] == 1.0  # float4 stores, every sector written in full
    assert reports[2]["plan"]["tile"] == [8, 32] and reports[1]["plan"]["tile"][0] < 8  # v1 shrinks fp32 tiles


@pytest.mark.parametrize("variant", [1, 2])
def test_an_input_channel_with_no_kept_tap_is_never_read(tool: Path, variant: int) -> None:
    weight = np.ones((64, 1, 3, 3), np.float32)
    keep = np.zeros(weight.shape, bool)
    keep[3] = True  # input channel 3 of 64 is the only one with kept taps
    layer = make_layer("one_channel", weight, np.linspace(-1, 1, 64).astype(np.float32), keep, channels=64,
                       hw=(20, 20), pads=(1, 1, 1, 1), activation=("relu", ()))
    run, _ = check_against_dense_reference(tool, layer, 1, "float32", seed=2, variant=variant)
    loads = run.traffic["x"]["loads"]
    assert loads["unique_sectors"] * 32 == 20 * 20 * 4  # exactly channel 3's plane, once with a perfect L2


def test_software_half_rounds_like_numpy(tool: Path, tmp_path: Path) -> None:
    # The CPU layer's __float2half_rn against numpy's float16 cast, bit for bit: normals, subnormals, ties,
    # overflow to inf, infinities (NaN payloads aside).
    rng = np.random.default_rng(3)
    values = np.concatenate([
        rng.standard_normal(20000) * 10.0 ** rng.integers(-9, 6, 20000),
        np.float16(np.arange(1, 2048)).astype(np.float32) * np.float32(2.0 ** -24) * 1.5,  # subnormal ties
        np.array([0.0, -0.0, 65504.0, 65519.9, 65520.0, 1e9, -1e9, np.inf, -np.inf, 2.0 ** -25, 2.0 ** -26]),
    ]).astype(np.float32)
    source, target = tmp_path / "in.bin", tmp_path / "out.bin"
    values.tofile(source)
    done = subprocess.run([str(tool), "half", str(source), str(target)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with np.errstate(over="ignore"):  # the overflow to inf is the point
        expected = values.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(np.fromfile(target, np.uint16), expected)


def test_fully_pruned_channels_write_activation_of_bias(tool: Path) -> None:
    weight = np.ones((32, 1, 3, 3), np.float32)
    keep = np.zeros(weight.shape, bool)
    keep[5, 0, 1, 1] = True  # one kept tap in the whole sub-GEMM: K_g = 1 padded to a tile of 32
    bias = np.linspace(-3, 3, 32).astype(np.float32)
    layer = make_layer("one_tap", weight, bias, keep, channels=32, hw=(6, 6), pads=(1, 1, 1, 1),
                       activation=("relu", ()))
    run = run_emulated(tool, layer, np.full((1, 32, 6, 6), 2.0, np.float32), sms=0)
    expected = np.maximum(np.broadcast_to(bias[None, :, None, None], run.y.shape), 0).copy()
    expected[0, 5] = max(2.0 + bias[5], 0)
    np.testing.assert_array_equal(run.y, expected)
