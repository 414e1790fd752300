#!/usr/bin/env python3
"""The GPU check of the DRSparseDepthwiseConv CUDA kernel: correctness and speed on every DW layer shape of
MobileNetV2, MobileNetV3-Small and EfficientNet-B0, against PyTorch's cuDNN depthwise conv and the memory floor.

Run on a machine with an NVIDIA GPU, nvcc, CMake and PyTorch (CUDA build), from the source checkout:

    pip install -e ".[test]" torch
    python bench/gpu/dr_dwconv_check.py                    # full table, JSON under bench/results/
    compute-sanitizer --tool memcheck python bench/gpu/dr_dwconv_check.py --quick
    python bench/gpu/dr_dwconv_check.py --roofline-only    # bytes/FLOPs/floor per layer, no GPU needed

What it does, per (model layer, batch 1|32, float32|float16, DW pruning ratio 0|0.5|0.7|0.85):
  * masks: bh-style, i.e. per sub-GEMM (32 channels) keep the largest |w| (BWT: the same ratio in every sub-GEMM),
    then align each sub-GEMM's kept count to the 32-wide K tile (HSR: round to the nearer multiple, under-align =
    restore, over-align = drop). Weights are random normal: timing depends only on the mask structure;
  * correctness: the output buffer is poisoned with NaN, our kernel runs, and the result is compared with
    torch.nn.functional.conv2d on the dense masked weights (+ bias + activation) computed in float32 (TF32 off):
    max |y - ref| / max |ref| <= 1e-5 (float32) and <= 1e-2 (float16);
  * speed: CUDA events around every launch, 20 warm-up runs, median of 200, against cuDNN's depthwise conv of the
    same dtype (conv + bias only: the activation is free for us and not charged to cuDNN);
  * memory floor: (input bytes of channels with a kept tap + output bytes + packed weight bytes) / the copy
    bandwidth measured on this card (a 1 GiB device-to-device copy), so "x floor" is distance from the physics;
  * batch 1, per model: all DW layers in sequence captured once in a CUDA graph and replayed (ours vs cuDNN).
The exit code is 1 when any correctness check fails. Results (card, date, exact command) go to bench/results/.

Layer shapes are the public architectures at 224x224 (torchvision's mobilenet_v2, mobilenet_v3_small and
efficientnet_b0 definitions; "same" padding k//2). tests/test_plugin_bench_table.py checks the MobileNetV2 rows
against the real model in ../shared/models and the EfficientNet-B0 byte count against the 390 MB of issue 8.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import platform
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deprune_onnx.op.packing import pack_dr_weights, subgemm_offsets  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
TILE = 32
SUBGEMM = 32
ACTIVATION_CODES = {"none": 0, "relu": 1, "clip": 2, "hard_swish": 3, "silu": 4}
ACTIVATION_PARAMS = {"clip": (0.0, 6.0), "hard_swish": (1 / 6, 0.5)}


@dataclass(frozen=True)
class Layer:
    """One DW conv at 224x224 input: channels, input H=W, kernel, stride, fused activation."""

    model: str
    index: int
    channels: int
    size: int
    kernel: int
    stride: int
    activation: str

    @property
    def pad(self) -> int:
        return self.kernel // 2

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.pad - self.kernel) // self.stride + 1

    @property
    def name(self) -> str:
        return f"{self.model}.dw{self.index:02d} {self.channels}x{self.size}^2 k{self.kernel}s{self.stride}"


def _layers(model: str, rows: list[tuple[int, int, int, int, str]]) -> list[Layer]:
    return [Layer(model, i, c, h, k, s, a) for i, (c, h, k, s, a) in enumerate(rows)]


# (channels, input size, kernel, stride, activation) in network order.
LAYERS: list[Layer] = (
    _layers("mobilenet_v2", [
        (32, 112, 3, 1, "clip"), (96, 112, 3, 2, "clip"), (144, 56, 3, 1, "clip"), (144, 56, 3, 2, "clip"),
        (192, 28, 3, 1, "clip"), (192, 28, 3, 1, "clip"), (192, 28, 3, 2, "clip"), (384, 14, 3, 1, "clip"),
        (384, 14, 3, 1, "clip"), (384, 14, 3, 1, "clip"), (384, 14, 3, 1, "clip"), (576, 14, 3, 1, "clip"),
        (576, 14, 3, 1, "clip"), (576, 14, 3, 2, "clip"), (960, 7, 3, 1, "clip"), (960, 7, 3, 1, "clip"),
        (960, 7, 3, 1, "clip")])
    + _layers("mobilenet_v3_small", [
        (16, 112, 3, 2, "relu"), (72, 56, 3, 2, "relu"), (88, 28, 3, 1, "relu"), (96, 28, 5, 2, "hard_swish"),
        (240, 14, 5, 1, "hard_swish"), (240, 14, 5, 1, "hard_swish"), (120, 14, 5, 1, "hard_swish"),
        (144, 14, 5, 1, "hard_swish"), (288, 14, 5, 2, "hard_swish"), (576, 7, 5, 1, "hard_swish"),
        (576, 7, 5, 1, "hard_swish")])
    + _layers("efficientnet_b0", [
        (32, 112, 3, 1, "silu"), (96, 112, 3, 2, "silu"), (144, 56, 3, 1, "silu"), (144, 56, 5, 2, "silu"),
        (240, 28, 5, 1, "silu"), (240, 28, 3, 2, "silu"), (480, 14, 3, 1, "silu"), (480, 14, 3, 1, "silu"),
        (480, 14, 5, 1, "silu"), (672, 14, 5, 1, "silu"), (672, 14, 5, 1, "silu"), (672, 14, 5, 2, "silu"),
        (1152, 7, 5, 1, "silu"), (1152, 7, 5, 1, "silu"), (1152, 7, 5, 1, "silu"), (1152, 7, 3, 1, "silu")])
)


def bh_keep_mask(weight: np.ndarray, ratio: float, tile: int = TILE, subgemm: int = SUBGEMM) -> np.ndarray:
    """Balanced (same ratio per sub-GEMM) magnitude mask with kept counts aligned to the tile (HSR-style)."""
    c_out, _, kh, kw = weight.shape
    groups = -(-c_out // subgemm)
    width = np.minimum(subgemm, c_out - np.arange(groups) * subgemm)
    vectors = width * kh * kw
    kept = vectors - np.round(ratio * vectors).astype(np.int64)
    eps = kept % tile
    aligned = np.where(eps >= tile / 2, kept + tile - eps, kept - eps)  # under-align (restore) or over-align (drop)
    kept = np.where(eps == 0, kept, np.clip(aligned, 0, vectors))
    magnitude = np.full((groups * subgemm, kh * kw), -1.0)  # padding channels rank last
    magnitude[:c_out] = np.abs(weight.reshape(c_out, kh * kw))
    per_group = magnitude.reshape(groups, subgemm * kh * kw)
    rank = np.argsort(np.argsort(-per_group, axis=1, kind="stable"), axis=1, kind="stable")
    keep = (rank < kept[:, None]).reshape(groups * subgemm, kh * kw)[:c_out]
    return keep.reshape(weight.shape)


def layer_bytes_flops(layer: Layer, batch: int, element_bytes: int, keep: np.ndarray) -> tuple[int, int]:
    """Bytes the kernel must move (needed input channels once, output once, packed weights) and its FLOPs."""
    channels_read = int(keep.reshape(layer.channels, -1).any(axis=1).sum())
    taps = int(keep.sum())
    moved = batch * element_bytes * (channels_read * layer.size ** 2 + layer.channels * layer.out_size ** 2)
    moved += taps * 8 + layer.channels * 4
    return moved, 2 * batch * layer.out_size ** 2 * taps


def roofline_table(bandwidth_gbs: float, batch: int, element_bytes: int) -> list[str]:
    """Per-layer and per-model bytes, FLOPs and floor time at a given bandwidth (dense, PR 0); needs no GPU."""
    lines = [f"{'layer':44s} {'MB':>8s} {'MFLOP':>8s} {'FLOP/B':>7s} {'floor us':>9s}"]
    totals: dict[str, list[int]] = {}

    def row(name: str, moved: int, flops: int) -> str:
        return (f"{name:44s} {moved / 1e6:8.2f} {flops / 1e6:8.1f} {flops / moved:7.2f} "
                f"{moved / (bandwidth_gbs * 1e3):9.1f}")

    for layer in LAYERS:
        keep = np.ones((layer.channels, 1, layer.kernel, layer.kernel), bool)
        moved, flops = layer_bytes_flops(layer, batch, element_bytes, keep)
        total = totals.setdefault(layer.model, [0, 0])
        total[0], total[1] = total[0] + moved, total[1] + flops
        lines.append(row(layer.name, moved, flops))
    lines += [row(f"total {model}", moved, flops) for model, (moved, flops) in totals.items()]
    return lines


class Problem(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in (
        "batch", "channels", "depthMultiplier", "inH", "inW", "outH", "outW", "kernelH", "kernelW", "strideH",
        "strideW", "dilationH", "dilationW", "padTop", "padLeft", "subgemmChannels", "activation")] + [
        ("actAlpha", ctypes.c_float), ("actBeta", ctypes.c_float)]


class Weights(ctypes.Structure):
    _fields_ = [("subgemmOffsets", ctypes.c_void_p), ("tapIndices", ctypes.c_void_p),
                ("tapValues", ctypes.c_void_p), ("bias", ctypes.c_void_p)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two layers, one config each, 3 timed runs "
                                                             "(for compute-sanitizer)")
    parser.add_argument("--roofline-only", action="store_true", help="print bytes/FLOPs/floor per layer and exit")
    parser.add_argument("--bandwidth", type=float, default=3350.0, help="GB/s for --roofline-only (H100 SXM: 3350)")
    parser.add_argument("--build-dir", type=Path, default=REPO / "build" / "bench-gpu")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default bench/results/...)")
    args = parser.parse_args()
    if args.roofline_only:
        for batch, element_bytes in ((32, 2), (32, 4), (1, 2)):
            print(f"\nbatch {batch}, {'float16' if element_bytes == 2 else 'float32'}, {args.bandwidth:.0f} GB/s")
            print("\n".join(roofline_table(args.bandwidth, batch, element_bytes)))
        return 0
    return run_check(args)


def run_check(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: PLC0415 - the check needs PyTorch, --roofline-only does not
        import torch.nn.functional as F  # noqa: N812, PLC0415
    except ImportError:
        print("dr_dwconv_check: needs PyTorch with CUDA (pip install torch); --roofline-only works without",
              file=sys.stderr)
        return 2

    from deprune_onnx.model_io import write_json_atomic  # noqa: PLC0415
    from deprune_onnx.trt.native import build_native  # noqa: PLC0415

    if not torch.cuda.is_available():
        print("dr_dwconv_check: no CUDA GPU visible to PyTorch", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    built = build_native(args.build_dir, None, cuda_architectures="native")
    library = ctypes.CDLL(str(built.kernels))
    library.drdwEnqueue.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_void_p]
    library.drdwStatusString.restype = ctypes.c_char_p
    device = torch.device("cuda")
    rng = np.random.default_rng(0)

    def timed(fn, runs: int) -> float:
        for _ in range(min(20, runs)):
            fn()
        times = []
        for _ in range(runs):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) * 1e3)
        return statistics.median(times)

    big = torch.empty(1 << 29, dtype=torch.float16, device=device)
    copy = torch.empty_like(big)
    bandwidth = 2 * big.numel() * 2 / (timed(lambda: copy.copy_(big), 20) * 1e-6) / 1e9  # GB/s, read + write
    del big, copy

    layers = LAYERS if not args.quick else [LAYERS[0], LAYERS[-4]]
    configs = [(b, d, r) for b in (1, 32) for d in ("float32", "float16") for r in (0.0, 0.5, 0.7, 0.85)]
    if args.quick:
        configs = [(2, "float32", 0.5), (2, "float16", 0.85)]
    runs = 3 if args.quick else args.runs
    results, failures = [], 0
    header = (f"{'layer':44s} {'N':>2s} {'dtype':7s} {'PR':>4s} {'relerr':>8s} {'ours us':>8s} {'cudnn us':>8s} "
              f"{'speedup':>7s} {'floor us':>8s} {'x floor':>7s}")
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth:.0f} GB/s\n{header}")
    launchers: dict[tuple[str, int, str, float], tuple] = {}
    for layer in layers:
        k = layer.kernel
        weight = rng.standard_normal((layer.channels, 1, k, k)).astype(np.float32)
        bias = rng.standard_normal(layer.channels).astype(np.float32)
        for batch, dtype_name, ratio in configs:
            dtype = getattr(torch, dtype_name)
            keep = bh_keep_mask(weight, ratio)
            packed = pack_dr_weights(np.where(keep, weight, 0), bias, keep_mask=keep)
            offsets = torch.tensor(subgemm_offsets(packed.kept_counts, TILE), dtype=torch.int32, device=device)
            indices = torch.tensor(packed.tap_indices, dtype=torch.int32, device=device)
            values = torch.tensor(packed.tap_values, dtype=torch.float32, device=device)
            bias_t = torch.tensor(packed.bias, dtype=torch.float32, device=device)
            params = ACTIVATION_PARAMS.get(layer.activation, (0.0, 0.0))
            problem = Problem(batch=batch, channels=layer.channels, depthMultiplier=1, inH=layer.size,
                              inW=layer.size, outH=layer.out_size, outW=layer.out_size, kernelH=k, kernelW=k,
                              strideH=layer.stride, strideW=layer.stride, dilationH=1, dilationW=1,
                              padTop=layer.pad, padLeft=layer.pad, subgemmChannels=SUBGEMM,
                              activation=ACTIVATION_CODES[layer.activation], actAlpha=params[0], actBeta=params[1])
            weights = Weights(offsets.data_ptr(), indices.data_ptr(), values.data_ptr(), bias_t.data_ptr())
            x = torch.randn(batch, layer.channels, layer.size, layer.size, device=device).to(dtype)
            y = torch.full((batch, layer.channels, layer.out_size, layer.out_size), float("nan"), device=device,
                           dtype=dtype)
            dtype_code = 1 if dtype_name == "float16" else 0

            def ours(x=x, y=y, problem=problem, weights=weights, dtype_code=dtype_code) -> None:
                status = library.drdwEnqueue(ctypes.byref(problem), ctypes.byref(weights), dtype_code,
                                             x.data_ptr(), y.data_ptr(),
                                             ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
                if status != 0:
                    raise RuntimeError(library.drdwStatusString(status).decode())

            ours()
            torch.cuda.synchronize()
            w_dense = torch.tensor(np.where(keep, weight, 0), device=device)
            ref = F.conv2d(x.float(), w_dense.to(dtype).float(), torch.tensor(bias, device=device).to(dtype).float(),
                           stride=layer.stride, padding=layer.pad, groups=layer.channels)
            ref = {"none": lambda t: t, "relu": F.relu, "clip": lambda t: t.clamp(0, 6), "hard_swish": F.hardswish,
                   "silu": F.silu}[layer.activation](ref)
            got = y.float()
            nan = bool(torch.isnan(got).any())
            rel = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
            ok = not nan and rel <= (1e-5 if dtype_name == "float32" else 1e-2)
            failures += not ok
            w_cudnn, b_cudnn = w_dense.to(dtype), torch.tensor(bias, device=device).to(dtype)

            def cudnn(x=x, w=w_cudnn, b=b_cudnn, layer=layer) -> torch.Tensor:
                return F.conv2d(x, w, b, stride=layer.stride, padding=layer.pad, groups=layer.channels)

            ours_us, cudnn_us = timed(ours, runs), timed(cudnn, runs)
            moved, flops = layer_bytes_flops(layer, batch, 2 if dtype_name == "float16" else 4, keep)
            floor_us = moved / (bandwidth * 1e3)
            results.append({"layer": layer.name, "model": layer.model, "batch": batch, "dtype": dtype_name,
                            "pr": ratio, "kept_counts": packed.kept_counts.tolist(), "max_rel_err": rel,
                            "poison_left": nan, "ok": ok, "ours_us": ours_us, "cudnn_us": cudnn_us,
                            "bytes": moved, "flops": flops, "floor_us": floor_us})
            print(f"{layer.name:44s} {batch:2d} {dtype_name:7s} {ratio:4.2f} {rel:8.1e} {ours_us:8.1f} "
                  f"{cudnn_us:8.1f} {cudnn_us / ours_us:7.2f} {floor_us:8.1f} {ours_us / floor_us:7.2f}"
                  f"{'' if ok else '  FAIL'}")
            if batch == 1:
                launchers[(layer.model, batch, dtype_name, ratio)] = launchers.get(
                    (layer.model, batch, dtype_name, ratio), ()) + ((ours, cudnn),)

    graphs = []
    for (model, batch, dtype_name, ratio), pairs in ([] if args.quick else launchers.items()):
        timings = {}
        for which in (0, 1):
            stream = torch.cuda.Stream()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream):
                for pair in pairs:
                    pair[which]()
                torch.cuda.synchronize()
                with torch.cuda.graph(graph, stream=stream):
                    for pair in pairs:
                        pair[which]()
            timings[which] = timed(graph.replay, runs)
        graphs.append({"model": model, "batch": batch, "dtype": dtype_name, "pr": ratio, "layers": len(pairs),
                       "ours_graph_us": timings[0], "cudnn_graph_us": timings[1]})
        print(f"CUDA graph {model} b{batch} {dtype_name} PR {ratio:.2f}: ours {timings[0]:.1f} us, "
              f"cuDNN {timings[1]:.1f} us ({len(pairs)} layers)")

    for batch in (1, 32):
        for dtype_name in ("float32", "float16"):
            for ratio in (0.0, 0.5, 0.7, 0.85):
                rows = [r for r in results if (r["batch"], r["dtype"], r["pr"]) == (batch, dtype_name, ratio)]
                if rows:
                    ours_total = sum(r["ours_us"] for r in rows)
                    print(f"total b{batch} {dtype_name} PR {ratio:.2f}: ours {ours_total:.0f} us, cuDNN "
                          f"{sum(r['cudnn_us'] for r in rows):.0f} us, floor {sum(r['floor_us'] for r in rows):.0f} "
                          f"us ({ours_total / sum(r['floor_us'] for r in rows):.2f}x floor)")

    card = torch.cuda.get_device_name()
    stamp = datetime.datetime.now(datetime.timezone.utc)
    output = args.output or RESULTS_DIR / (f"dr_dwconv_{card.replace(' ', '_')}_{stamp:%Y%m%dT%H%M%SZ}"
                                           f"{'_quick' if args.quick else ''}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, {
        "card": card, "date": stamp.isoformat(), "command": shlex.join([sys.executable, *sys.argv]),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "host": platform.node(), "copy_bandwidth_gbs": bandwidth, "runs": runs, "failures": failures,
        "layers": results, "cuda_graphs": graphs})
    print(f"{failures} failure(s); wrote {output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
