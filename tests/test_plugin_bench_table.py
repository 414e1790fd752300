"""The GPU check's hard-coded layer table and its bh-style masks, checked on the CPU (bench/gpu/ itself needs a
GPU): MobileNetV2 rows equal the real model's DW layers, EfficientNet-B0 moves the 390 MB of issue 8."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from _plugin_native import real_dw_layers

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu" / "dr_dwconv_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("dr_dwconv_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is being executed
    spec.loader.exec_module(module)
    return module


def test_mobilenet_v2_rows_match_the_real_model(check) -> None:
    real = [(l.input_shape[1], l.input_shape[2], l.weight.shape[2], l.strides[0], l.output_shape[2])
            for l in real_dw_layers() if l.model == "mobilenet_v2_torchvision.onnx"]
    table = [(l.channels, l.size, l.kernel, l.stride, l.out_size) for l in check.LAYERS if l.model == "mobilenet_v2"]
    assert table == real


def test_layer_counts_and_efficientnet_bytes(check) -> None:
    counts = {m: sum(l.model == m for l in check.LAYERS) for m in ("mobilenet_v2", "mobilenet_v3_small",
                                                                     "efficientnet_b0")}
    assert counts == {"mobilenet_v2": 17, "mobilenet_v3_small": 11, "efficientnet_b0": 16}
    activations = sum(32 * 2 * (l.channels * l.size ** 2 + l.channels * l.out_size ** 2)
                      for l in check.LAYERS if l.model == "efficientnet_b0")
    assert round(activations / 1e6) == 390


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.7, 0.85])
def test_bh_masks_are_balanced_and_tile_aligned(check, ratio: float) -> None:
    weight = np.random.default_rng(1).standard_normal((144, 1, 3, 3))
    keep = check.bh_keep_mask(weight, ratio)
    per_group = np.add.reduceat(keep.reshape(144, 9).sum(axis=1), np.arange(0, 144, 32))
    vectors = np.array([288, 288, 288, 288, 144])
    assert all(k % 32 == 0 or k == v for k, v in zip(per_group, vectors))
    assert np.all(np.abs(per_group - (1 - ratio) * vectors) <= 16)
    # kept taps are the largest |w| of their sub-GEMM
    group0 = np.abs(weight[:32]).ravel()
    assert group0[keep[:32].ravel()].min(initial=np.inf) >= group0[~keep[:32].ravel()].max(initial=-np.inf)
