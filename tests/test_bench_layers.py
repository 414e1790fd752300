"""deprune_onnx/trt/layer_bench.py without a GPU: layers read back from a pruned model, bytes/FLOPs, the ctypes
mirror of the kernel's C ABI, and the table/totals/JSON on synthetic timings (no GPU result is faked as real)."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from support.plugin_native import build_test_native, has_nvcc, real_dw_layers
from support.samples import SAMPLE_MODEL
from deprune_onnx.dw.planner import DWOptions
from deprune_onnx.errors import DepruneError
from deprune_onnx.onnx_io.load_save import load_model
from deprune_onnx.op.attributes import DRConvParams
from deprune_onnx.op.packing import pack_dr_weights, unpack_dr_weights
from deprune_onnx.pipeline import PruneOptions, prune_model
from deprune_onnx.trt import layer_bench as lb
from deprune_onnx.trt.native import LIBRARY_FILES

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "trt_plugins" / "dr_sparse_dwconv"


@pytest.fixture(scope="module")
def mobilenet_v2_pruned() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """MobileNetV2 pruned (bh, 0.5) twice from the same plan: as the custom op and as dense masked Convs."""
    plugin = prune_model(load_model(SAMPLE_MODEL), PruneOptions(dw=DWOptions(dw_ratio=0.5)))
    dense = prune_model(load_model(SAMPLE_MODEL), PruneOptions(output_format="dense"), plan=plugin.plan)
    return plugin.model, dense.model


@pytest.mark.model
def test_layers_of_a_pruned_mobilenet_v2(mobilenet_v2_pruned) -> None:
    plugin, dense = mobilenet_v2_pruned
    layers = lb.layers_from_model(plugin, group="mv2")
    real = [l for l in real_dw_layers() if l.model == "mobilenet_v2_torchvision.onnx"]
    assert [l.name for l in layers] == [r.name for r in real]
    assert [(l.params.channels, l.height, l.width, l.out_height, l.out_width) for l in layers] == \
        [(r.input_shape[1], r.input_shape[2], r.input_shape[3], r.output_shape[2], r.output_shape[3]) for r in real]
    assert {l.group for l in layers} == {"mv2"} and {l.model_dtype for l in layers} == {"float32"}
    # The packed weights read back through decode_attributes are exactly the dense pruned model's weights.
    dense_weights = {init.name: onnx.numpy_helper.to_array(init) for init in dense.graph.initializer}
    dense_convs = {node.name: node for node in dense.graph.node if node.op_type == "Conv"}
    for layer in layers:
        weight, _ = unpack_dr_weights(layer.packed, layer.params.out_channels, *layer.params.kernel_shape)
        np.testing.assert_array_equal(weight, dense_weights[dense_convs[layer.name].input[1]], err_msg=layer.name)
        assert layer.kept_fraction == pytest.approx(np.count_nonzero(weight) / weight.size, abs=0.01)


def test_load_bench_layers_errors(tmp_path: Path) -> None:
    with pytest.raises(DepruneError, match="no DRSparseDepthwiseConv node"):
        lb.load_bench_layers(SAMPLE_MODEL)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(DepruneError, match="bad.onnx"):
        lb.load_bench_layers(bad)


@pytest.mark.model
def test_a_layer_without_static_spatial_shape_is_named(mobilenet_v2_pruned) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(mobilenet_v2_pruned[0])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    with pytest.raises(DepruneError, match=r"node '/features/features.1/.*no static NCHW shape"):
        lb.layers_from_model(model)


def small_layer(keep: np.ndarray, dtype=np.float32) -> lb.BenchLayer:
    weight = np.random.default_rng(3).standard_normal(keep.shape).astype(dtype)
    params = DRConvParams(channels=keep.shape[0], kernel_shape=keep.shape[2:], strides=(2, 2), pads=(1, 1, 1, 1))
    packed = pack_dr_weights(np.where(keep, weight, 0), np.ones(keep.shape[0], dtype), keep_mask=keep)
    return lb.BenchLayer("dw", params, packed, height=16, width=12, group="g")


def test_traffic_counts_only_channels_with_a_kept_tap() -> None:
    keep = np.ones((40, 1, 3, 3), bool)
    keep[[3, 17, 39]] = False  # three channels lose every tap: their input is never read
    layer = small_layer(keep)
    assert (layer.out_height, layer.out_width) == (8, 6) and layer.channels_read() == 37
    moved, flops = layer.traffic(batch=2, element_bytes=2)
    weights = 8 * layer.packed.tap_indices.size + 4 * (40 + 2)
    assert moved == 2 * 2 * (37 * 16 * 12 + 40 * 8 * 6) + weights
    assert flops == 2 * 2 * 8 * 6 * 37 * 9
    assert layer.shape_text == "40x16x12 k3s2"


def test_weights_as_rounds_like_the_plugin() -> None:
    layer = small_layer(np.ones((4, 1, 3, 3), bool))
    as16 = layer.weights_as("float16")
    assert as16.tap_values.dtype == np.float32
    np.testing.assert_array_equal(as16.tap_values, layer.packed.tap_values.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(layer.weights_as("float32").tap_values, layer.packed.tap_values)
    fp16_model_layer = small_layer(np.ones((4, 1, 3, 3), bool), dtype=np.float16)
    assert fp16_model_layer.model_dtype == "float16"
    np.testing.assert_array_equal(fp16_model_layer.weights_as("float32").tap_values,
                                  fp16_model_layer.packed.tap_values.astype(np.float32))


def test_ctypes_structs_mirror_the_c_abi() -> None:
    header = (PLUGIN_DIR / "drSparseDwConvKernel.h").read_text()
    body = re.search(r"typedef struct DrDwConvProblem\s*\{(.*?)\}", header, re.S).group(1)
    names = re.findall(r"\b(\w+)\s*[,;]", re.sub(r"/\*.*?\*/", "", body, flags=re.S))
    assert names == [name for name, _ in lb.Problem._fields_]
    body = re.search(r"typedef struct DrDwConvWeights\s*\{(.*?)\}", header, re.S).group(1)
    assert re.findall(r"\*\s*(\w+);", body) == [name for name, _ in lb.Weights._fields_]
    assert f"#define DRDW_ABI_VERSION {lb.DRDW_ABI_VERSION}" in header
    assert "DRDW_FLOAT32 = 0" in header and "DRDW_FLOAT16 = 1" in header
    assert lb.DTYPE_CODES == {"float32": 0, "float16": 1}
    index = (PLUGIN_DIR / "drSparseDwConvIndex.h").read_text()
    codes = dict((name, int(v)) for name, v in re.findall(r"kAct(\w+) = (\d+)", index))
    assert codes == {"None": 0, "Relu": 1, "Clip": 2, "HardSwish": 3, "Silu": 4}
    assert lb.ACTIVATION_CODES == {"none": 0, "relu": 1, "clip": 2, "hard_swish": 3, "silu": 4}


def test_make_problem() -> None:
    layer = small_layer(np.ones((40, 1, 3, 3), bool))
    layer = replace(layer, params=replace(layer.params, activation="clip", activation_params=(0.0, 6.0),
                                          pads=(1, 0, 2, 1)))
    problem = lb.make_problem(layer, batch=5)
    assert (problem.batch, problem.channels, problem.inH, problem.inW, problem.outH, problem.outW) == \
        (5, 40, 16, 12, layer.out_height, layer.out_width)
    assert (problem.padTop, problem.padLeft, problem.activation, problem.actAlpha, problem.actBeta) == \
        (1, 0, 2, 0.0, 6.0)


def synthetic_result(layer: str, batch: int, ours: float, cudnn: float, ok: bool = True) -> lb.LayerResult:
    """Made-up timings to check the arithmetic and layout of tables and totals, nothing measured."""
    return lb.LayerResult(layer=layer, group="m", shape="32x112x112 k3s1", batch=batch, dtype="float16", kept=0.5,
                          max_rel_err=1e-3 if ok else 0.5, poison_left=not ok, ok=ok, ours_us=ours, cudnn_us=cudnn,
                          bytes=1_000_000, flops=2_000_000, floor_us=ours / 2)


def test_totals_table_and_json_on_synthetic_timings() -> None:
    results = [synthetic_result("a", 1, 10.0, 20.0), synthetic_result("b", 1, 30.0, 30.0, ok=False),
               synthetic_result("a", 32, 100.0, 150.0)]
    totals = lb.summarize(results)
    assert [(t["batch"], t["layers"], t["failures"]) for t in totals] == [(1, 2, 1), (32, 1, 0)]
    assert totals[0]["ours_us"] == 40.0 and totals[0]["cudnn_us"] == 50.0 and totals[0]["speedup"] == 1.25
    assert totals[0]["x_floor"] == 2.0 and totals[1]["bytes"] == 1_000_000
    lines = lb.format_table(results, totals)
    assert lines[0].split()[:3] == ["layer", "shape", "N"] and len(lines) == 1 + 3 + 2
    assert lines[1].split()[-5:] == ["10.0", "20.0", "2.00", "5.0", "2.00"] and "FAIL" not in lines[1]
    assert lines[2].endswith("FAIL (unwritten output)")
    assert lines[4].startswith("total m N=1 float16: 2 layers, ours 40.0 us, cuDNN 50.0 us (1.25x)")
    document = json.loads(json.dumps({"layers": [r.to_dict() for r in results], "totals": totals}))
    assert document["layers"][0]["speedup"] == 2.0 and document["layers"][1]["poison_left"] is True


def test_tolerances_and_batches() -> None:
    assert lb.tolerance("float32") == 1e-5 and lb.tolerance("float16") == 1e-2
    assert lb.parse_batches("1, 32") == [1, 32]
    for bad in ("", "0", "1,x", "-2"):
        with pytest.raises(DepruneError, match="--batch"):
            lb.parse_batches(bad)


@pytest.mark.native
@pytest.mark.skipif(not has_nvcc(), reason="nvcc not found: the CUDA kernel library is not built")
def test_kernel_library_wrapper_on_the_built_library() -> None:
    library = lb.KernelLibrary(build_test_native() / LIBRARY_FILES["kernels"])  # ABI version checked on load
    problem = lb.make_problem(small_layer(np.ones((8, 1, 3, 3), bool)), batch=1)
    with pytest.raises(RuntimeError, match="null pointer argument"):  # refused before any CUDA call: no GPU needed
        library.enqueue(problem, lb.Weights(), "float32", 0, 0, 0)


def test_channel_taps_rebuild_the_dense_weights() -> None:
    # Kernel version 2's per-channel tap lists (the bench uploads them; the plugin decodes the same in C++).
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((70, 1, 5, 3)).astype(np.float32)
    keep = rng.random(weight.shape) < 0.4
    keep[10:20] = False  # channels without taps
    packed = pack_dr_weights(np.where(keep, weight, 0), rng.standard_normal(70).astype(np.float32), keep_mask=keep)
    params = DRConvParams(channels=70, kernel_shape=(5, 3))
    offsets, codes, values = lb.channel_taps(packed, params)
    assert offsets.shape == (71,) and offsets[0] == 0 and offsets[-1] == keep.sum() == codes.size == values.size
    rebuilt = np.zeros_like(weight)
    for channel in range(70):
        span = slice(offsets[channel], offsets[channel + 1])
        for code, value in zip(codes[span], values[span]):
            rebuilt[channel, 0, code >> 8, code & 0xFF] = value
    np.testing.assert_array_equal(rebuilt, np.where(keep, weight, 0))
    assert np.all(offsets[11:21] == offsets[10])
