"""Render the JSON files of one GPU session (bench/gpu/run_all.sh) as the markdown tables the docs quote.

    python bench/gpu/report.py bench/results/gpu_run_<stamp>/dr_dwconv_check.json \
        [--bench bench/results/gpu_run_<stamp>/bench_mv2_bh50.json] > bench/results/gpu_<card>_<date>.md

Reads only what the check and ``deprune-onnx bench --json`` wrote (no GPU needed), so the tables in the docs can be
regenerated from the committed results. Per group (architecture x PR x batch x dtype): the summed per-layer
medians of kernel versions 1 and 2 and of cuDNN (each timed from CUDA-graph bursts, see layer_bench.py), the
memory floor (bytes each layer must move / the copy bandwidth measured on the card), and the ratios the goals of
issue 16 are stated in (cuDNN time / ours: above 1 is faster than cuDNN; ours / floor: 1 is the floor).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _groups_table(check: dict[str, Any]) -> list[str]:
    totals: dict[tuple, dict[int, dict[str, Any]]] = {}
    for total in check["totals"]:
        key = (total["group"], total["batch"], total["dtype"])
        totals.setdefault(key, {})[total["kernel"]] = total
    lines = ["| group | batch | dtype | layers | v1 us | v2 us | cuDNN us | floor us | cuDNN/v1 | cuDNN/v2 | v2/floor |"
             " failures |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (group, batch, dtype), by_kernel in totals.items():
        v1, v2 = by_kernel.get(1), by_kernel[2]
        v1_us, v1_ratio = (f"{v1['ours_us']:.1f}", f"{v1['cudnn_us'] / v1['ours_us']:.2f}x") if v1 else ("-", "-")
        lines.append(f"| {group} | {batch} | {dtype} | {v2['layers']} | {v1_us} | {v2['ours_us']:.1f} | "
                     f"{v2['cudnn_us']:.1f} | {v2['floor_us']:.1f} | {v1_ratio} | "
                     f"{v2['cudnn_us'] / v2['ours_us']:.2f}x | {v2['ours_us'] / v2['floor_us']:.1f}x | "
                     f"{sum(t['failures'] for t in by_kernel.values())} |")
    return lines


def _graphs_table(check: dict[str, Any]) -> list[str]:
    lines = ["| architecture | PR | dtype | layers | v1 us | v2 us | cuDNN us | cuDNN/v2 |", "|---|---|---|---|---|---|---|---|"]
    for g in check["cuda_graphs"]:
        lines.append(f"| {g['architecture']} | {g['pr']:.2f} | {g['dtype']} | {g['layers']} | "
                     f"{g['ours_v1_graph_us']:.1f} | {g['ours_v2_graph_us']:.1f} | {g['cudnn_graph_us']:.1f} | "
                     f"{g['cudnn_graph_us'] / g['ours_v2_graph_us']:.2f}x |")
    return lines


def _bench_table(bench: dict[str, Any]) -> list[str]:
    lines = ["| run | batch | layers | ours us | cuDNN us | floor us | cuDNN/ours | ours/floor | failures |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run, document in bench.items():
        for t in document["totals"]:
            lines.append(f"| {run} | {t['batch']} | {t['layers']} | {t['ours_us']:.1f} | {t['cudnn_us']:.1f} | "
                         f"{t['floor_us']:.1f} | {t['speedup']:.2f}x | {t['x_floor']:.1f}x | {t['failures']} |")
    return lines


def render(check: dict[str, Any], bench: dict[str, Any] | None) -> str:
    """Markdown for one session: provenance, per-group totals, CUDA-graph replays and the optional bench run."""
    layers = check["layers"]
    worst = max(layers, key=lambda r: r["max_rel_err"])
    out = [f"Card {check['card']}, {check['date']}, torch {check['torch']}, CUDA {check['cuda']}, cuDNN "
           f"{check['cudnn']}, copy bandwidth {check['copy_bandwidth_gbs']:.0f} GB/s (read + write), "
           f"{check['warmup']} warm-up + {check['runs']} timed replays per layer (median).",
           f"Command: `{check['command']}`. Complete: {check['complete']}"
           + (f" (not run for time: {', '.join(check['skipped_for_time'])})" if check["skipped_for_time"] else "")
           + f". Layer runs checked against the float64 reference: {len(layers)}, failures {check['failures']}, "
           f"largest relative error {worst['max_rel_err']:.1e} ({worst['layer']}, {worst['dtype']}).",
           "", "Sums over each model's DW layers (per-layer medians):", "", *_groups_table(check), "",
           "Batch 1, each model's DW layers captured back to back in one CUDA graph (network order, no CPU launch gaps):",
           "", *_graphs_table(check)]
    if bench:
        out += ["", "`deprune-onnx bench` on the sample MobileNetV2 pruned bh at DW ratio 0.5 (`--kernel 1` and "
                "`--kernel 2`):", "", *_bench_table(bench)]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", type=Path, help="dr_dwconv_check.json of a full (not --quick) check")
    parser.add_argument("--bench", type=Path, help="bench_mv2_bh50.json of the same card")
    args = parser.parse_args()
    bench = json.loads(args.bench.read_text()) if args.bench else None
    print(render(json.loads(args.check.read_text()), bench), end="")


if __name__ == "__main__":
    main()
