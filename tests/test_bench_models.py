"""The GPU check's architectures (deprune_onnx/trt/bench_models.py), checked on the CPU: the MobileNetV2 rows equal
the real model's DW layers, EfficientNet-B0 moves the 390 MB of issue 8, and the pruned layers the check times are
the real pipeline's bh masks (tile-aligned, balanced, activation fused) read back like any pruned model."""
from __future__ import annotations

import numpy as np
import pytest

from support.plugin_native import real_dw_layers
from deprune_onnx.dw.masks import subgemm_vectors
from deprune_onnx.trt.bench_models import (ARCHITECTURES, LAYER_SHAPES, architecture_layers, pruned_bench_layers,
                                           pruned_dw_layers_model)
from deprune_onnx.trt.layer_bench import layers_from_model


def test_mobilenet_v2_rows_match_the_real_model() -> None:
    real = [(l.input_shape[1], l.input_shape[2], l.weight.shape[2], l.strides[0], l.output_shape[2])
            for l in real_dw_layers() if l.model == "mobilenet_v2_torchvision.onnx"]
    table = [(l.channels, l.size, l.kernel, l.stride, l.out_size) for l in architecture_layers("mobilenet_v2")]
    assert table == real


def test_layer_counts_and_efficientnet_bytes() -> None:
    counts = {m: len(architecture_layers(m)) for m in ARCHITECTURES}
    assert counts == {"mobilenet_v2": 17, "mobilenet_v3_small": 11, "efficientnet_b0": 16}
    assert sum(counts.values()) == len(LAYER_SHAPES)
    activations = sum(32 * 2 * (l.channels * l.size ** 2 + l.channels * l.out_size ** 2)
                      for l in architecture_layers("efficientnet_b0"))
    assert round(activations / 1e6) == 390
    with pytest.raises(ValueError, match="unknown architecture"):
        architecture_layers("resnet50")


@pytest.mark.parametrize("ratio", [0.0, 0.7])
def test_pruned_layers_are_the_pipelines_bh_masks(ratio: float) -> None:
    rows = architecture_layers("mobilenet_v3_small")
    # The check's layers, packed straight from the plan as the GPU check reads them (the test below checks they
    # equal the rewritten model's).
    layers = pruned_bench_layers("mobilenet_v3_small", ratio, group="v3")
    assert [l.name for l in layers] == [r.name for r in rows]
    assert [(l.params.channels, l.height, l.params.kernel_shape[0], l.params.strides[0], l.out_height)
            for l in layers] == [(r.channels, r.size, r.kernel, r.stride, r.out_size) for r in rows]
    # Each architecture's activation is the op's fused activation.
    assert [l.params.activation for l in layers] == [r.activation for r in rows]
    kept = total = 0
    for layer, row in zip(layers, rows):
        vectors = subgemm_vectors((row.channels, 1, row.kernel, row.kernel))
        counts = layer.packed.kept_counts
        assert np.all((counts % 32 == 0) | (counts == vectors)), layer.name  # HSR: whole K tiles
        kept, total = kept + int(counts.sum()), total + int(vectors.sum())
    assert abs((1 - kept / total) - ratio) <= 0.02  # the balance step keeps the model-wide ratio near the target


def test_packed_layers_without_the_rewrite_equal_the_rewritten_model() -> None:
    # The GPU check packs the plan's masks directly (no onnx-graphsurgeon on the GPU machines): same layers.
    rewritten = layers_from_model(pruned_dw_layers_model("mobilenet_v3_small", 0.5), group="g")
    direct = pruned_bench_layers("mobilenet_v3_small", 0.5, group="g")
    assert [l.name for l in direct] == [l.name for l in rewritten]
    for a, b in zip(direct, rewritten):
        assert a.params == b.params and (a.height, a.width) == (b.height, b.width), a.name
        for field in ("kept_counts", "tap_indices", "tap_values", "bias"):
            np.testing.assert_array_equal(getattr(a.packed, field), getattr(b.packed, field), err_msg=a.name)
