"""Time and check every DRSparseDepthwiseConv layer of a pruned model on the GPU: our kernel vs cuDNN.

Shared by `deprune-onnx bench` and the GPU check (bench/gpu/dr_dwconv_check.py), so both read layers, run the
kernel, check it and print numbers the same way:

* layers come from a pruned model (``layers_from_model``): the packed weights are read back through
  ``op.attributes.decode_attributes`` (the spec's one reader), the input H/W from ONNX shape inference on the
  lowered model (the custom op has no shape function, its lowering keeps every tensor name);
* our kernel runs through its plain C ABI (libdeprune_drdw_kernels.so, ctypes), no TensorRT involved;
* correctness: output poisoned with NaN, a fresh random input per layer, the reference computed in float64 on the
  GPU from the dense masked weights (``unpack_dr_weights``, the packer's exact inverse) with the activation of
  ``op.activations``; pass = no NaN left and max |y - ref| / max |ref| within the op spec's tolerance;
* speed: CUDA graphs of back-to-back launches over rotating input sets (no CPU launch overhead, no L2 reuse),
  warm-up, median replay time per launch; the baseline is PyTorch's cuDNN depthwise conv2d on the same dense
  masked weights in the same dtype (conv + bias: the fused activation is not charged to cuDNN);
* the memory floor: bytes the layer must move (input channels with a kept tap read once, output written once,
  packed weights) over the device-to-device copy bandwidth measured on the card.

Everything that needs no GPU (layer extraction, bytes/FLOPs, tables, totals, JSON) works without torch; the GPU
part imports torch lazily and fails with one DepruneError line when torch, a CUDA GPU or the kernel library is
missing.
"""
from __future__ import annotations

import ctypes
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deprune_onnx.errors import DepruneError
from deprune_onnx.extras import install_hint
from deprune_onnx.op import spec
from deprune_onnx.op.activations import apply_activation
from deprune_onnx.onnx_io.graph import node_attributes
from deprune_onnx.onnx_io.shapes import conv_output_size
from deprune_onnx.op.attributes import DRConvParams, decode_attributes, kept_slot_mask
from deprune_onnx.op.packing import PackedDR, subgemm_offsets, unpack_dr_weights

DRDW_ABI_VERSION = 2  # drSparseDwConvKernel.h
KERNEL_VERSIONS = (1, 2)  # DRDW_KERNEL_V1, DRDW_KERNEL_V2
DEFAULT_KERNEL = 2  # DRDW_KERNEL_DEFAULT: v2, measured faster than v1 on an H200 (bench/results/gpu_h200_2026-11-30.md)
DTYPE_CODES = {"float32": 0, "float16": 1}  # enum DrDwDataType
ELEMENT_BYTES = {"float32": 4, "float16": 2}
# enum Activation of drSparseDwConvIndex.h is the spec's activation list in order (a test checks the header).
ACTIVATION_CODES = {name: code for code, name in enumerate(spec.ACTIVATIONS)}


@dataclass(frozen=True)
class BenchLayer:
    """One DRSparseDepthwiseConv node: its decoded parameters, packed weights and static input H/W."""

    name: str
    params: DRConvParams
    packed: PackedDR
    height: int
    width: int
    group: str = ""  # what totals are summed over (model file, or architecture and ratio)

    @property
    def out_height(self) -> int:
        (top, _, bottom, _), (kh, _), (sh, _), (dh, _) = (self.params.pads, self.params.kernel_shape,
                                                          self.params.strides, self.params.dilations)
        return conv_output_size(self.height, top, bottom, kh, sh, dh)

    @property
    def out_width(self) -> int:
        (_, left, _, right), (_, kw), (_, sw), (_, dw) = (self.params.pads, self.params.kernel_shape,
                                                          self.params.strides, self.params.dilations)
        return conv_output_size(self.width, left, right, kw, sw, dw)

    @property
    def model_dtype(self) -> str:
        """The float type the model stores the taps in (TensorRT runs the layer in it: strongly typed)."""
        return str(self.packed.tap_values.dtype)

    @property
    def kept_taps(self) -> int:
        return int(np.sum(self.packed.kept_counts, dtype=np.int64))

    @property
    def kept_fraction(self) -> float:
        return self.kept_taps / (self.params.out_channels * self.params.taps_per_channel)

    @property
    def shape_text(self) -> str:
        (kh, kw), (sh, sw) = self.params.kernel_shape, self.params.strides
        kernel = f"k{kh}" if kh == kw else f"k{kh}x{kw}"
        stride = f"s{sh}" if sh == sw else f"s{sh}x{sw}"
        return f"{self.params.channels}x{self.height}x{self.width} {kernel}{stride}"

    def channels_read(self) -> int:
        """Input channels with at least one kept tap: the only ones the kernel must read."""
        kept = self.packed.tap_indices[kept_slot_mask(self.packed.kept_counts, self.params.k_tile)]
        out_channels = kept.astype(np.int64) // self.params.taps_per_channel
        return int(np.unique(out_channels // self.params.depth_multiplier).size)

    def traffic(self, batch: int, element_bytes: int) -> tuple[int, int]:
        """(bytes, FLOPs) of one run: needed input read once, output written once, packed weights read once."""
        activations = batch * element_bytes * (self.channels_read() * self.height * self.width
                                               + self.params.out_channels * self.out_height * self.out_width)
        weights = 8 * int(self.packed.tap_indices.size) + 4 * (self.params.out_channels + len(self.packed.kept_counts))
        return activations + weights, 2 * batch * self.out_height * self.out_width * self.kept_taps

    def weights_as(self, dtype: str) -> PackedDR:
        """The packed weights as a plugin running in ``dtype`` holds them: stored values rounded through the model's
        (or, for a float16 run of a float32 model, float16) precision, then widened to float32 like the plugin."""
        rounding = np.float16 if dtype == "float16" else self.packed.tap_values.dtype

        def widen(values: np.ndarray) -> np.ndarray:
            return values.astype(rounding).astype(np.float32)

        return PackedDR(self.packed.kept_counts, self.packed.tap_indices, widen(self.packed.tap_values),
                        widen(self.packed.bias))


def layers_from_model(model: onnx.ModelProto, group: str = "") -> list[BenchLayer]:
    """Every DRSparseDepthwiseConv node of ``model`` with its input H/W; raises DepruneError naming the node."""
    from deprune_onnx.op.lower import lower  # noqa: PLC0415 - graphsurgeon import only when layers are read
    from deprune_onnx.onnx_io.shapes import infer_tensor_shapes  # noqa: PLC0415

    nodes = spec.custom_nodes(model)
    shapes = infer_tensor_shapes(lower(model)) if nodes else {}
    layers = []
    for node in nodes:
        where = f"node '{node.name}'"
        params, packed = decode_attributes(node_attributes(node), where=where)
        shape = shapes.get(node.input[0]) if node.input else None
        if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise DepruneError(f"{where}: input '{node.input[0] if node.input else ''}' has no static NCHW shape "
                               f"({list(shape) if shape else 'unknown'}); bench needs fixed H and W")
        if shape[1] != params.channels:
            raise DepruneError(f"{where}: input has {shape[1]} channels, the node says {params.channels}")
        layers.append(BenchLayer(node.name, params, packed, int(shape[2]), int(shape[3]), group))
    return layers


def load_bench_layers(path: str | Path) -> list[BenchLayer]:
    """The custom layers of a pruned model file; one-line DepruneError for a bad file or a model without any."""
    from deprune_onnx.onnx_io.load_save import load_model  # noqa: PLC0415

    path = Path(path)
    layers = layers_from_model(load_model(path), group=path.stem)
    if not layers:
        raise DepruneError(f"{path}: no {spec.OP_TYPE} node; bench times pruned models written with "
                           "`deprune-onnx prune --format plugin` (the default)")
    return layers


def parse_batches(text: str) -> list[int]:
    """'1,32' -> [1, 32]; every batch a positive integer."""
    try:
        batches = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise DepruneError(f"--batch '{text}': expected positive integers separated by commas, e.g. 1,32")
    return batches


# ---------------------------------------------------------------------------------------------------------------
# Results, totals and formatting (no GPU needed)

@dataclass(frozen=True)
class LayerResult:
    """One (layer, batch, dtype) measurement."""

    layer: str
    group: str
    shape: str
    batch: int
    dtype: str
    kept: float            # kept taps / all taps
    max_rel_err: float
    poison_left: bool      # some output element was never written
    ok: bool
    ours_us: float
    cudnn_us: float
    bytes: int
    flops: int
    floor_us: float        # bytes / measured copy bandwidth
    kernel: int = DEFAULT_KERNEL  # kernel version timed as "ours"

    @property
    def speedup(self) -> float:
        return self.cudnn_us / self.ours_us

    @property
    def x_floor(self) -> float:
        return self.ours_us / self.floor_us

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup, "x_floor": self.x_floor}


def tolerance(dtype: str) -> float:
    """The op spec's max relative error for a dtype."""
    return spec.MAX_RELATIVE_ERROR[dtype]


def summarize(results: Sequence[LayerResult]) -> list[dict[str, Any]]:
    """Totals per (group, batch, dtype, kernel version) in first-seen order: summed times, floors, failures."""
    totals: dict[tuple[str, int, str], dict[str, Any]] = {}
    for r in results:
        entry = totals.setdefault((r.group, r.batch, r.dtype, r.kernel), {
            "group": r.group, "batch": r.batch, "dtype": r.dtype, "kernel": r.kernel, "layers": 0, "failures": 0,
            "ours_us": 0.0,
            "cudnn_us": 0.0, "floor_us": 0.0, "bytes": 0})
        entry["layers"] += 1
        entry["failures"] += not r.ok
        entry["ours_us"] += r.ours_us
        entry["cudnn_us"] += r.cudnn_us
        entry["floor_us"] += r.floor_us
        entry["bytes"] += r.bytes
    for entry in totals.values():
        entry["speedup"] = entry["cudnn_us"] / entry["ours_us"]
        entry["x_floor"] = entry["ours_us"] / entry["floor_us"]
    return list(totals.values())


def format_table(results: Sequence[LayerResult], totals: Sequence[dict[str, Any]], name_width: int | None = None
                 ) -> list[str]:
    """The header, one line per result and one total line per (group, batch, dtype), as lines of text."""
    width = name_width or max([len(r.layer) + 3 for r in results] + [5])
    header = (f"{'layer':{width}s} {'shape':>18s} {'N':>3s} {'dtype':7s} {'kept':>5s} {'rel err':>8s} "
              f"{'ours us':>8s} {'cuDNN us':>8s} {'speedup':>7s} {'floor us':>8s} {'x floor':>7s}")
    lines = [header]
    for r in results:
        name = r.layer if r.kernel == DEFAULT_KERNEL else f"{r.layer}@v{r.kernel}"
        lines.append(f"{name:{width}s} {r.shape:>18s} {r.batch:3d} {r.dtype:7s} {r.kept:5.0%} "
                     f"{r.max_rel_err:8.1e} {r.ours_us:8.1f} {r.cudnn_us:8.1f} {r.speedup:7.2f} {r.floor_us:8.1f} "
                     f"{r.x_floor:7.2f}{'' if r.ok else '  FAIL' + (' (unwritten output)' if r.poison_left else '')}")
    for t in totals:
        version = f" v{t['kernel']}" if t.get("kernel", DEFAULT_KERNEL) != DEFAULT_KERNEL else ""
        lines.append(f"total {t['group']} N={t['batch']} {t['dtype']}{version}: {t['layers']} layers, ours "
                     f"{t['ours_us']:.1f} us, cuDNN {t['cudnn_us']:.1f} us ({t['speedup']:.2f}x), floor "
                     f"{t['floor_us']:.1f} us ({t['x_floor']:.2f}x floor), {t['failures']} failure(s)")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# GPU side: torch (lazily), the kernel's C ABI, timing

class Problem(ctypes.Structure):
    """struct DrDwConvProblem of drSparseDwConvKernel.h."""

    _fields_ = [(name, ctypes.c_int32) for name in (
        "batch", "channels", "depthMultiplier", "inH", "inW", "outH", "outW", "kernelH", "kernelW", "strideH",
        "strideW", "dilationH", "dilationW", "padTop", "padLeft", "subgemmChannels", "activation")] + [
        ("actAlpha", ctypes.c_float), ("actBeta", ctypes.c_float)]


class Weights(ctypes.Structure):
    """struct DrDwConvWeights of drSparseDwConvKernel.h (device pointers)."""

    _fields_ = [("subgemmOffsets", ctypes.c_void_p), ("tapIndices", ctypes.c_void_p),
                ("tapValues", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("channelTapOffsets", ctypes.c_void_p),
                ("channelTapCodes", ctypes.c_void_p), ("channelTapValues", ctypes.c_void_p)]


def channel_taps(packed: PackedDR, params: DRConvParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kernel version 2's weights: each output channel's kept taps (offsets [C_out+1], codes ky << 8 | kx, values).

    The same decoding as decodeChannelTaps of drSparseDwConvCore.cpp (the plugin's, at creation): padding
    dropped, taps in increasing flat index, which the packed layout already has.
    """
    kept = kept_slot_mask(packed.kept_counts, params.k_tile)
    flat = packed.tap_indices[kept].astype(np.int64)
    channel, within = np.divmod(flat, params.taps_per_channel)
    ky, kx = np.divmod(within, params.kernel_shape[1])
    offsets = np.searchsorted(channel, np.arange(params.out_channels + 1)).astype(np.int32)
    return offsets, ((ky << 8) | kx).astype(np.int32), packed.tap_values[kept].astype(np.float32)


def make_problem(layer: BenchLayer, batch: int) -> Problem:
    """The kernel's problem struct for one layer at one batch size."""
    p = layer.params
    alpha, beta = (tuple(p.activation_params) + (0.0, 0.0))[:2]
    return Problem(batch=batch, channels=p.channels, depthMultiplier=p.depth_multiplier, inH=layer.height,
                   inW=layer.width, outH=layer.out_height, outW=layer.out_width, kernelH=p.kernel_shape[0],
                   kernelW=p.kernel_shape[1], strideH=p.strides[0], strideW=p.strides[1], dilationH=p.dilations[0],
                   dilationW=p.dilations[1], padTop=p.pads[0], padLeft=p.pads[1], subgemmChannels=p.subgemm_channels,
                   activation=ACTIVATION_CODES[p.activation], actAlpha=alpha, actBeta=beta)


class KernelLibrary:
    """libdeprune_drdw_kernels.so through ctypes (its C ABI: drdwAbiVersion, drdwEnqueue, drdwStatusString)."""

    def __init__(self, path: Path) -> None:
        try:
            self._lib = ctypes.CDLL(str(path))
            self._lib.drdwEnqueueVersion.argtypes = [ctypes.POINTER(Problem), ctypes.POINTER(Weights),
                                                     ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                                                     ctypes.c_void_p, ctypes.c_int32]
            self._lib.drdwEnqueueVersion.restype = ctypes.c_int32
            self._lib.drdwStatusString.argtypes = [ctypes.c_int32]
            self._lib.drdwStatusString.restype = ctypes.c_char_p
            version = self._lib.drdwAbiVersion()
        except (OSError, AttributeError) as exc:
            raise DepruneError(f"{path}: not a usable DRSparseDepthwiseConv kernel library ({exc})") from None
        if version != DRDW_ABI_VERSION:
            raise DepruneError(f"{path}: kernel C ABI version {version}, this deprune-onnx needs {DRDW_ABI_VERSION}; "
                               "rebuild with `deprune-onnx build-plugin`")
        self.path = path

    def enqueue(self, problem: Problem, weights: Weights, dtype: str, x: int, y: int, stream: int,
                version: int = DEFAULT_KERNEL) -> None:
        status = self._lib.drdwEnqueueVersion(ctypes.byref(problem), ctypes.byref(weights), DTYPE_CODES[dtype],
                                              ctypes.c_void_p(x), ctypes.c_void_p(y), ctypes.c_void_p(stream),
                                              version)
        if status != 0:
            raise RuntimeError(f"drdwEnqueue: {self._lib.drdwStatusString(status).decode()} (status {status})")


def require_torch_cuda() -> Any:
    """``import torch`` with a visible CUDA GPU, or one DepruneError line saying which is missing."""
    try:
        import torch  # noqa: PLC0415 - optional dependency, only the GPU benchmark needs it
    except ImportError:
        raise DepruneError("bench needs PyTorch with CUDA (torch is not installed) for the cuDNN baseline and the "
                           f"GPU buffers: {install_hint('finetune')}") from None
    if not torch.cuda.is_available():
        raise DepruneError("bench needs a CUDA GPU, and PyTorch sees none (check the driver and "
                           "CUDA_VISIBLE_DEVICES, or a CPU-only torch build)")
    return torch


def require_gpu_stack(build_dir: str | Path | None) -> tuple[Any, KernelLibrary]:
    """torch with a CUDA GPU, then the built kernel library: the first missing piece is the one reported."""
    torch = require_torch_cuda()
    from deprune_onnx.trt.native import plugin_library  # noqa: PLC0415

    return torch, KernelLibrary(plugin_library("kernels", build_dir))


def time_us(torch: Any, fn: Callable[[], Any], warmup: int, iters: int) -> float:
    """Median time of ``fn`` in microseconds: CUDA events around each call, after ``warmup`` calls.

    Only for work far longer than a launch (the copy-bandwidth probe, graph replays): around a single short launch
    the events also time the CPU's launch overhead. Layers are timed by ``graph_time_us``.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(torch: Any, megabytes: int = 512) -> float:
    """Device-to-device copy bandwidth in GB/s, bytes read plus bytes written (the floor's denominator)."""
    source = torch.empty(megabytes << 20, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    microseconds = time_us(torch, lambda: target.copy_(source), 3, 20)
    return 2 * source.numel() / (microseconds * 1e-6) / 1e9


def graph_replay_us(torch: Any, launches: Sequence[Callable[[], Any]], warmup: int, iters: int,
                    repeat: int = 1) -> float:
    """Median time of ``launches`` (in order, ``repeat`` times over) captured in one CUDA graph, per repetition.

    A graph replays its kernels back to back with no CPU launch overhead between them, so a batch-1 layer of a
    few microseconds is timed by the GPU alone (METHOD.md: events around single launches would time the launch).
    """
    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1":
        # Capture needs PyTorch's caching allocator (a cudaMalloc during capture is refused, and cuDNN allocates its
        # workspace); the compute-sanitizer runs switch it off so that an overrun hits a real allocation boundary,
        # and their timings mean nothing anyway: launch directly instead.
        # One launch per timed call: under racecheck a launch takes ~0.2 s (H200, 2026-11-30), so a burst would not
        # fit the sanitizer's time budget.
        return time_us(torch, lambda: [launch() for launch in launches], min(warmup, 1), min(iters, 1))
    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        for launch in launches:  # warm-up outside the capture: lazy allocations and cuDNN plans happen here
            launch()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(repeat):
                for launch in launches:
                    launch()
    return time_us(torch, graph.replay, warmup, iters) / repeat


def graph_time_us(torch: Any, launch: Callable[[], Any], warmup: int, iters: int, expected_us: float) -> float:
    """Median time of one ``launch`` from a CUDA graph of back-to-back launches (about 200 us of work per replay).

    ``expected_us`` (e.g. the memory floor) sizes the burst: enough launches that the replay's own start-up is
    small against it, at most 64.
    """
    repeat = max(4, min(64, int(200.0 / max(expected_us, 1.0))))
    return graph_replay_us(torch, [launch], warmup, iters, repeat=repeat)


class DeviceLayer:
    """One layer's packed weights, input and output on the GPU, with our kernel and the cuDNN baseline as calls."""

    L2_ROTATION_BYTES = 256 << 20  # inputs+outputs cycled through per timed burst: several times any L2 (H200: 60 MB)

    def __init__(self, torch: Any, library: KernelLibrary, layer: BenchLayer, batch: int, dtype: str,
                 seed: int, version: int = DEFAULT_KERNEL) -> None:
        self.torch, self.library, self.layer, self.batch, self.dtype = torch, library, layer, batch, dtype
        self.version = version
        p = layer.params
        self.packed = layer.weights_as(dtype)

        def device(array: np.ndarray, kind: Any) -> Any:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device="cuda", dtype=kind)

        offsets = subgemm_offsets(self.packed.kept_counts, p.k_tile)
        tap_offsets, tap_codes, tap_values = channel_taps(self.packed, p)
        self._buffers = [device(offsets, torch.int32), device(self.packed.tap_indices, torch.int32),
                         device(self.packed.tap_values, torch.float32), device(self.packed.bias, torch.float32),
                         device(tap_offsets, torch.int32), device(np.append(tap_codes, 0), torch.int32),
                         device(np.append(tap_values, 0), torch.float32)]  # never empty: a valid pointer
        self.weights = Weights(*(buffer.data_ptr() for buffer in self._buffers))
        self.problem = make_problem(layer, batch)
        torch_dtype = getattr(torch, dtype)
        generator = torch.Generator(device="cuda").manual_seed(seed)
        # Several input/output sets, used in turn, so that back-to-back timed launches read DRAM, not the L2
        # cache the previous launch filled (both kernels see the same rotation).
        moved, _ = layer.traffic(batch, ELEMENT_BYTES[dtype])
        copies = max(1, min(8, -(-self.L2_ROTATION_BYTES // max(moved, 1))))
        self.xs = [torch.randn(batch, p.channels, layer.height, layer.width, device="cuda", generator=generator
                               ).to(torch_dtype) for _ in range(copies)]
        self.ys = [torch.empty(batch, p.out_channels, layer.out_height, layer.out_width, device="cuda",
                               dtype=torch_dtype) for _ in range(copies)]
        self.x, self.y = self.xs[0], self.ys[0]
        self._turn = 0
        dense, bias = unpack_dr_weights(self.packed, p.out_channels, *p.kernel_shape, k_tile=p.k_tile)
        self.dense = device(dense, torch.float64)
        self.bias = device(bias, torch.float64)
        self._cudnn_weight, self._cudnn_bias = self.dense.to(torch_dtype), self.bias.to(torch_dtype)
        top, left, bottom, right = p.pads
        self._symmetric = top == bottom and left == right

    def _next(self) -> int:
        self._turn = (self._turn + 1) % len(self.xs)
        return self._turn

    def ours(self) -> None:
        """Launch our kernel on the current stream (the next input/output set)."""
        i = self._next()
        self.library.enqueue(self.problem, self.weights, self.dtype, self.xs[i].data_ptr(), self.ys[i].data_ptr(),
                             self.torch.cuda.current_stream().cuda_stream, self.version)

    def _conv(self, x: Any, weight: Any, bias: Any) -> Any:
        p = self.layer.params
        top, left, bottom, right = p.pads
        if not self._symmetric:
            x = self.torch.nn.functional.pad(x, (left, right, top, bottom))
        padding = (top, left) if self._symmetric else 0
        return self.torch.nn.functional.conv2d(x, weight, bias, stride=p.strides, padding=padding,
                                               dilation=p.dilations, groups=p.channels)

    def cudnn(self) -> Any:
        """PyTorch's conv2d (cuDNN) on the dense masked weights in the run's dtype: conv + bias (next input set)."""
        return self._conv(self.xs[self._next()], self._cudnn_weight, self._cudnn_bias)

    def check(self) -> tuple[float, bool]:
        """Run ours once on a poisoned output; (max relative error vs the float64 reference, output left unwritten)."""
        self.y.fill_(float("nan"))
        self.library.enqueue(self.problem, self.weights, self.dtype, self.x.data_ptr(), self.y.data_ptr(),
                             self.torch.cuda.current_stream().cuda_stream, self.version)
        self.torch.cuda.synchronize()
        got = self.y.double().cpu().numpy()
        conv = self._conv(self.x.double(), self.dense, self.bias).cpu().numpy()
        p = self.layer.params
        with np.errstate(over="ignore"):  # silu's exp(-y) overflows to inf for very negative y, giving the exact -0
            reference = apply_activation(conv, p.activation, p.activation_params)
        poison_left = bool(np.isnan(got).any())
        scale = max(float(np.abs(reference).max()), 1e-30)
        error = float(np.nanmax(np.abs(got - reference))) / scale if not np.isnan(got).all() else float("inf")
        return error, poison_left


def measure_layer(torch: Any, library: KernelLibrary, layer: BenchLayer, batch: int, dtype: str, *, warmup: int,
                  iters: int, bandwidth_gbs: float, seed: int = 0, version: int = DEFAULT_KERNEL,
                  cudnn_us: float | None = None) -> tuple[LayerResult, DeviceLayer]:
    """Check and time one layer with kernel ``version``; returns the result and the device state (for CUDA-graph
    timing). ``cudnn_us`` reuses a baseline already timed on the same layer, batch and dtype (side-by-side runs)."""
    run = DeviceLayer(torch, library, layer, batch, dtype, seed, version)
    error, poison_left = run.check()
    moved, flops = layer.traffic(batch, ELEMENT_BYTES[dtype])
    floor = moved / (bandwidth_gbs * 1e3)
    ours_us = graph_time_us(torch, run.ours, warmup, iters, floor)
    if cudnn_us is None:
        cudnn_us = graph_time_us(torch, run.cudnn, warmup, iters, floor)
    ok = not poison_left and error <= tolerance(dtype)
    result = LayerResult(layer=layer.name, group=layer.group, shape=layer.shape_text, batch=batch, dtype=dtype,
                         kept=layer.kept_fraction, max_rel_err=error, poison_left=poison_left, ok=ok, ours_us=ours_us,
                         cudnn_us=cudnn_us, bytes=moved, flops=flops, floor_us=floor, kernel=version)
    return result, run
