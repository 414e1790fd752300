#!/usr/bin/env python3
"""The memory behaviour of the CUDA kernel, read off its real device code run on the CPU (no GPU needed).

For every DW layer of MobileNetV2, MobileNetV3-Small and EfficientNet-B0 (the GPU check's layers: bh masks of the
real pipeline, deprune_onnx/trt/bench_models.py), the kernel runs through drdw_emu_tool (the CUDA-on-CPU layer,
trt_plugins/dr_sparse_dwconv/tests/cudaOnCpu.h) with the plugin's launch plan for a 132-SM GPU, its output is
checked against the numpy oracle, and the recorded global traffic is reported (deprune_onnx/trt/emulated.py):
requested bytes over the memory floor, DRAM bytes with a perfect L2 and with no reuse between blocks over the
floor, 32-byte sectors per warp request, and bytes in flight per SM implied by the code against the ~20 KB per SM
the H200's bandwidth-latency product needs.

    python bench/gpu/emulated_traffic.py                       # PR 0 and 0.5, batch 1, fp32 and fp16, v1 and v2
    python bench/gpu/emulated_traffic.py --ratios 0 --batch 2 --output bench/results/emulated_traffic.json

These are counts from an emulation, not measurements: no caches, no timing.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deprune_onnx.op import spec  # noqa: E402
from deprune_onnx.op.attributes import encode_attributes  # noqa: E402
from deprune_onnx.op.oracle import run_dr_sparse_dwconv  # noqa: E402
from deprune_onnx.op.packing import PackedDR  # noqa: E402
from deprune_onnx.trt.bench_models import ARCHITECTURES, pruned_bench_layers  # noqa: E402
from deprune_onnx.trt.emulated import build_emulator, format_report, run_emulated, traffic_report  # noqa: E402
from deprune_onnx.trt.layer_bench import BenchLayer  # noqa: E402


def summarize(rows: list[dict]) -> list[str]:
    """Totals per (architecture and PR, dtype, kernel version): byte-weighted ratios over the floor, and the range of
    bytes in flight per SM over the layers."""
    lines = [f"{'group':28s} {'dtype':7s} {'v':>1s} {'req/floor':>9s} {'L2-perfect/floor':>16s} "
             f"{'no-reuse/floor':>14s} {'KB in flight/SM min..max':>24s}"]
    keys = list(dict.fromkeys((r["group"], r["dtype"], r["variant"]) for r in rows))
    for group, dtype, variant in keys:
        chosen = [r for r in rows if (r["group"], r["dtype"], r["variant"]) == (group, dtype, variant)]
        floor = sum(r["floor_bytes"] for r in chosen)
        in_flight = [r["bytes_in_flight_per_sm"] / 1024 for r in chosen]
        lines.append(f"{group:28s} {dtype:7s} {variant:1d} {sum(r['requested_bytes'] for r in chosen) / floor:9.2f} "
                     f"{sum(r['dram_bytes_perfect_l2'] for r in chosen) / floor:16.2f} "
                     f"{sum(r['dram_bytes_no_block_reuse'] for r in chosen) / floor:14.2f} "
                     f"{min(in_flight):11.1f}..{max(in_flight):<11.1f}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", default="0,0.5", help="DW pruning ratios, comma-separated")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--kernels", default="1,2", help="kernel versions, side by side")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for every row")
    args = parser.parse_args()
    from deprune_onnx.onnx_io.load_save import write_json_atomic, write_text_atomic  # noqa: PLC0415

    tool = build_emulator()
    rows, failures = [], 0
    for ratio in (float(r) for r in args.ratios.split(",")):
        for architecture in ARCHITECTURES:
            for layer in pruned_bench_layers(architecture, ratio, group=f"{architecture} PR {ratio:.2f}"):
                for dtype, version in ((d, int(v)) for d in args.dtypes.split(",") for v in args.kernels.split(",")):
                    p = layer.packed
                    stored = BenchLayer(layer.name, layer.params, PackedDR(p.kept_counts, p.tap_indices,
                                        p.tap_values.astype(dtype), p.bias.astype(dtype)), layer.height, layer.width,
                                        layer.group)
                    x = np.random.default_rng(0).standard_normal(
                        (args.batch, layer.params.channels, layer.height, layer.width)).astype(dtype)
                    run = run_emulated(tool, stored, x, variant=version)
                    reference = run_dr_sparse_dwconv(x, encode_attributes(stored.params, stored.packed))
                    reference = reference.astype(np.float64)
                    error = float(np.abs(run.y - reference).max() / np.abs(reference).max())
                    ok = not np.isnan(run.y).any() and error <= spec.MAX_RELATIVE_ERROR[dtype]
                    failures += not ok
                    row = {**traffic_report(stored, args.batch, dtype, run), "pr": ratio, "group": layer.group,
                           "max_rel_err": error, "ok": ok}
                    rows.append(row)
                    print(format_report([row])[1] + ("" if ok else "  WRONG"), flush=True)
    print(format_report([])[0])
    summary = summarize(rows)
    print("\n".join(summary))
    if args.output:
        command = shlex.join(["python", *sys.argv])
        date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(args.output, {"command": command, "host": platform.node(), "date": date,
                                        "source": "CPU emulation of the kernels' device code, no GPU", "rows": rows})
        write_text_atomic(args.output.with_suffix(".md"), "\n".join([
            "# Memory traffic of the DRSparseDepthwiseConv kernels, counted on the CPU", "",
            f"`{command}` on {platform.node()} ({date}). Counts from the CUDA-on-CPU emulation of the kernels'",
            "real device code (deprune_onnx/trt/emulated.py says what each column means); no GPU, no timing.", "",
            "```", *summary, "```", "", "Per layer:", "", "```", *format_report(rows), "```", ""]))
    print(f"{failures} wrong layer(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
