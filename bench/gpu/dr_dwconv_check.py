#!/usr/bin/env python3
"""The GPU check of the DRSparseDepthwiseConv CUDA kernel: correctness and speed on every DW layer shape of
MobileNetV2, MobileNetV3-Small and EfficientNet-B0, against PyTorch's cuDNN depthwise conv and the memory floor.

Run on a machine with an NVIDIA GPU, nvcc, CMake and PyTorch (CUDA build), from the source checkout
(bench/gpu/run_all.sh does all of it on a fresh box):

    python bench/gpu/dr_dwconv_check.py                    # full table, JSON under bench/results/
    compute-sanitizer --tool memcheck python bench/gpu/dr_dwconv_check.py --quick
    python bench/gpu/dr_dwconv_check.py --roofline-only    # bytes/FLOPs/floor per layer, no GPU needed

Per architecture and DW pruning ratio 0 / 0.5 / 0.7 / 0.85, the architecture's DW layers (random weights) go
through the real `prune` pipeline (method bh: DCP + BWT + HSR decided per model) and are packed with the plan's
masks (deprune_onnx/trt/bench_models.py: `pruned_bench_layers`, no onnx-graphsurgeon needed), and every layer is
checked and timed at batch 1 and 32, float32 and float16, kernel versions 1 and 2 side by side (`--kernels`), by
deprune_onnx/trt/layer_bench.py, the same code as `deprune-onnx bench`: poisoned output, fresh random input,
float64 reference on the dense masked weights, op-spec tolerance (1e-5 float32, 1e-2 float16), median per-launch
time from CUDA-graph replays of back-to-back launches over rotating inputs, against cuDNN (timed once per layer),
and the distance from the memory floor (bytes / measured copy bandwidth). At batch 1 each model's DW layers are
also captured in one CUDA graph in network order and replayed (each kernel version vs cuDNN).
Results (card, date, exact command) go to bench/results/ as JSON; the exit code is 1 when any check fails.

Imports only numpy, onnx, torch and the parts of deprune_onnx that need nothing more: it runs on the GPU machines that lack
onnx-graphsurgeon, polygraphy and onnxconverter-common (tests/test_bench_run_all.py checks it with them blocked).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deprune_onnx.trt import layer_bench as lb  # noqa: E402
from deprune_onnx.trt.bench_models import ARCHITECTURES, LAYER_SHAPES, pruned_bench_layers  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
RATIOS = (0.0, 0.5, 0.7, 0.85)
BATCHES = (1, 32)
DTYPES = ("float32", "float16")
NAME_WIDTH = max(len(layer.name) for layer in LAYER_SHAPES)


def pruned_layers(architecture: str, ratio: float) -> list[lb.BenchLayer]:
    """The architecture's DW layers pruned by the real pipeline (bh masks), packed like the rewrite packs them."""
    return pruned_bench_layers(architecture, ratio, group=f"{architecture} PR {ratio:.2f}")


def roofline_table(bandwidth_gbs: float, batch: int, dtype: str) -> list[str]:
    """Per-layer and per-model bytes, FLOPs and floor time at a given bandwidth (dense, PR 0); needs no GPU."""
    lines = [f"{'layer':26s} {'shape':>16s} {'MB':>8s} {'MFLOP':>8s} {'FLOP/B':>7s} {'floor us':>9s}"]

    def row(name: str, shape: str, moved: int, flops: int) -> str:
        return (f"{name:26s} {shape:>16s} {moved / 1e6:8.2f} {flops / 1e6:8.1f} {flops / moved:7.2f} "
                f"{moved / (bandwidth_gbs * 1e3):9.1f}")

    for architecture in ARCHITECTURES:
        total_bytes = total_flops = 0
        for layer in pruned_layers(architecture, 0.0):
            moved, flops = layer.traffic(batch, lb.ELEMENT_BYTES[dtype])
            total_bytes, total_flops = total_bytes + moved, total_flops + flops
            lines.append(row(layer.name, layer.shape_text, moved, flops))
        lines.append(row(f"total {architecture}", "", total_bytes, total_flops))
    return lines


def run_check(args: argparse.Namespace) -> int:
    try:
        torch = lb.require_torch_cuda()
    except lb.DepruneError as exc:
        print(f"dr_dwconv_check: {exc}", file=sys.stderr)
        return 2
    from deprune_onnx.onnx_io.load_save import write_json_atomic  # noqa: PLC0415
    from deprune_onnx.trt.native import build_native  # noqa: PLC0415

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    built = build_native(args.build_dir, None, cuda_architectures="native")
    library = lb.KernelLibrary(built.kernels)
    bandwidth = lb.copy_bandwidth_gbs(torch)
    card = torch.cuda.get_device_name()
    print(f"{card}: copy bandwidth {bandwidth:.0f} GB/s; kernel library {built.kernels}", flush=True)

    warmup, iters = (2, 3) if args.quick else (args.warmup, args.runs)
    if args.quick:  # two layers (a 3x3 and a 5x5), one config each, every kernel version: for compute-sanitizer
        plan = [("mobilenet_v2", 0.5, [0], [(2, "float32")]), ("efficientnet_b0", 0.85, [12], [(2, "float16")])]
    else:
        plan = [(arch, ratio, None, [(b, d) for b in BATCHES for d in DTYPES])
                for ratio in RATIOS for arch in ARCHITECTURES]  # every architecture at PR 0 first
    began = time.monotonic()
    skipped: list[str] = []
    results: list[lb.LayerResult] = []
    records: list[dict[str, Any]] = []
    graphs: list[dict[str, Any]] = []
    stamp = datetime.datetime.now(datetime.timezone.utc)
    output = args.output or RESULTS_DIR / (f"dr_dwconv_{card.replace(' ', '_')}_{stamp:%Y%m%dT%H%M%SZ}"
                                           f"{'_quick' if args.quick else ''}.json")
    output.parent.mkdir(parents=True, exist_ok=True)

    def save(complete: bool) -> None:
        """Rewrite the JSON after every group, so a run cut short (time limit) still leaves its numbers."""
        write_json_atomic(output, {
            "card": card, "date": stamp.isoformat(), "command": shlex.join([sys.executable, *sys.argv]),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "host": platform.node(), "copy_bandwidth_gbs": bandwidth, "warmup": warmup, "runs": iters,
            "complete": complete, "skipped_for_time": skipped, "kernels": list(args.kernels),
            "failures": sum(not r.ok for r in results), "layers": records,
            "totals": lb.summarize(results) if results else [], "cuda_graphs": graphs})

    print(lb.format_table([], [], name_width=NAME_WIDTH)[0])
    for architecture, ratio, picks, configs in plan:
        if args.budget_s and time.monotonic() - began > args.budget_s:
            skipped.append(f"{architecture} PR {ratio:.2f}")
            print(f"budget of {args.budget_s:.0f} s spent: {architecture} PR {ratio:.2f} skipped", flush=True)
            continue
        layers = pruned_layers(architecture, ratio)
        layers = [layers[i] for i in picks] if picks is not None else layers
        for batch, dtype in configs:
            runs: dict[int, list[lb.DeviceLayer]] = {version: [] for version in args.kernels}
            for index, layer in enumerate(layers):
                cudnn_us = None  # timed once per layer, shared by the kernel versions (side by side, same inputs)
                for version in args.kernels:
                    result, run = lb.measure_layer(torch, library, layer, batch, dtype, warmup=warmup, iters=iters,
                                                   bandwidth_gbs=bandwidth, seed=index, version=version,
                                                   cudnn_us=cudnn_us)
                    cudnn_us = result.cudnn_us
                    results.append(result)
                    records.append({**result.to_dict(), "architecture": architecture, "pr": ratio,
                                    "kept_counts": layer.packed.kept_counts.tolist()})
                    print(lb.format_table([result], [], name_width=NAME_WIDTH)[1], flush=True)
                    if batch == 1 and not args.quick:
                        runs[version].append(run)
            if runs[args.kernels[0]]:
                cudnn = lb.graph_replay_us(torch, [run.cudnn for run in runs[args.kernels[0]]], warmup, iters)
                entry = {"architecture": architecture, "pr": ratio, "batch": batch, "dtype": dtype,
                         "layers": len(runs[args.kernels[0]]), "cudnn_graph_us": cudnn}
                for version in args.kernels:
                    entry[f"ours_v{version}_graph_us"] = lb.graph_replay_us(torch, [run.ours for run in runs[version]],
                                                                            warmup, iters)
                graphs.append(entry)
                ours = ", ".join(f"ours v{v} {entry[f'ours_v{v}_graph_us']:.1f} us" for v in args.kernels)
                print(f"CUDA graph {architecture} PR {ratio:.2f} N={batch} {dtype}: {ours}, cuDNN {cudnn:.1f} us "
                      f"({entry['layers']} layers)", flush=True)
            del runs
        save(complete=False)

    save(complete=not skipped)
    print("\n".join(lb.format_table(results, lb.summarize(results))[len(results) + 1:]))
    failures = sum(not r.ok for r in results)
    print(f"{failures} failure(s); wrote {output}")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="two layers, one config each, 3 timed runs (for compute-sanitizer)")
    parser.add_argument("--roofline-only", action="store_true", help="print bytes/FLOPs/floor per layer and exit")
    parser.add_argument("--bandwidth", type=float, default=3350.0, help="GB/s for --roofline-only (H100 SXM: 3350)")
    parser.add_argument("--build-dir", type=Path, default=REPO / "build" / "bench-gpu")
    parser.add_argument("--warmup", type=int, default=5, help="graph replays before timing")
    parser.add_argument("--runs", type=int, default=30, help="timed graph replays (median)")
    parser.add_argument("--kernels", type=lambda text: tuple(int(v) for v in text.split(",")), default=(1, 2),
                        help="kernel versions timed side by side, e.g. 1,2 (default) or 2")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="start no new architecture/ratio group after this many seconds (0: no limit)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default bench/results/...)")
    args = parser.parse_args()
    if args.roofline_only:
        for batch, dtype in ((32, "float16"), (32, "float32"), (1, "float16")):
            print(f"\nbatch {batch}, {dtype}, {args.bandwidth:.0f} GB/s")
            print("\n".join(roofline_table(args.bandwidth, batch, dtype)))
        return 0
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
