"""The CUDA kernel's real device code run on the CPU (drdw_emu_tool), and the memory traffic it requests.

Why: CI has no GPU, and the kernel's correctness and its memory behaviour must not wait for one. The tool
(trt_plugins/dr_sparse_dwconv/tests/emuTool.cpp) compiles the kernel's device header unchanged with g++ through
the CUDA-on-CPU layer of tests/cudaOnCpu.h, launches it with the plugin's own launch plan, and records the global
addresses each warp request touches. This module writes its inputs (the plugin fields exactly as the TensorRT
ONNX parser passes them), runs it, and turns the recorded traffic into the numbers the memory floor judges:

* requested bytes (input loads + output stores) against the floor: each needed input channel read once, each
  output written once (``BenchLayer.traffic`` without the weights);
* DRAM bytes with a perfect L2 (distinct 32-byte sectors of the launch) and with no reuse between blocks
  (distinct sectors per block, summed): the halo re-reads and the staging waste;
* 32-byte sectors per warp request, and the sector efficiency: requested bytes / (32 x sectors), 1.0 when every
  sector a request touches is used in full (a coalesced float32 warp load: 128 bytes in 4 sectors);
* bytes in flight per SM implied by the code: resident blocks per SM x warps x input bytes a warp has requested
  before it waits (``in_flight_per_warp``, a property of the kernel's source), against what the H200's
  bandwidth-latency product needs.
Numbers are from the CPU emulation, not from a GPU: no caches, no timing.
"""
from __future__ import annotations

import json
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deprune_onnx.errors import DepruneError
from deprune_onnx.op.attributes import encode_attributes
from deprune_onnx.trt.layer_bench import ELEMENT_BYTES, BenchLayer

TOOL = "drdw_emu_tool"
FIELD_TYPES = {"float16": 0, "float32": 1, "int32": 5, "char": 6, "int64": 10}
KERNEL_VARIANTS = (1, 2)
# Registers per thread (ptxas -v, sm_90, CUDA 13.0; tests/test_plugin_ptxas.py checks there are no spills).
REGISTERS_PER_THREAD = {1: 64, 2: 64}
# H200 (KINDS.md / H200.md): 132 SMs, 228 KB shared memory per SM (227 KB per block), 64K registers, 2048 threads;
# 4.3 TB/s measured copy bandwidth; ~0.6 us DRAM latency (a lead, not measured here).
SM_LIMITS = {"sms": 132, "shared_bytes": 228 * 1024, "registers": 65536, "threads": 2048, "blocks": 32}
NEEDED_IN_FLIGHT_PER_SM = 4.3e12 * 0.6e-6 / 132  # bytes: bandwidth x latency / SMs, about 20 KB


def write_field_file(path: Path, fields: list[tuple[str, str, Any]]) -> None:
    """Write (name, type, value) like the TensorRT ONNX parser passes PluginFields (tests/fieldFile.h reads it)."""
    chunks = [b"DRDWFLD1", struct.pack("<I", len(fields))]
    for name, kind, value in fields:
        if kind == "char":
            data = str(value).encode() + b"\0"
            length = len(data)
        else:
            array = np.ascontiguousarray(value, dtype={"int32": np.int32, "int64": np.int64,
                                                       "float32": np.float32, "float16": np.float16}[kind])
            data, length = array.tobytes(), array.size
        encoded = name.encode()
        chunks += [struct.pack("<I", len(encoded)), encoded, struct.pack("<iiQ", FIELD_TYPES[kind], length, len(data)),
                   data]
    path.write_bytes(b"".join(chunks))


def layer_fields(layer: BenchLayer, value_type: str) -> list[tuple[str, str, Any]]:
    """The layer's node attributes as plugin fields, tap values and bias in ``value_type`` (the model's float)."""
    attrs = encode_attributes(layer.params, layer.packed)
    fields: list[tuple[str, str, Any]] = []
    for name, value in attrs.items():
        if name in ("plugin_namespace", "plugin_version"):
            continue
        if name == "activation":
            fields.append((name, "char", value))
        elif name in ("tap_values", "bias"):
            fields.append((name, value_type, value))
        elif name == "activation_params":
            fields.append((name, "float32", np.asarray(value)))
        else:
            fields.append((name, "int32", np.atleast_1d(np.asarray(value))))
    return fields


def build_emulator(build_dir: str | Path | None = None) -> Path:
    """Build drdw_emu_tool with CMake (g++ only, no CUDA needed); returns its path."""
    from deprune_onnx.trt.native import SOURCE_ROOT, build_native  # noqa: PLC0415

    build = Path(build_dir) if build_dir else SOURCE_ROOT / "build" / "emulated"
    build_native(build, None, cuda=False, targets=[TOOL], warnings_as_errors=True)
    return build / TOOL


@dataclass(frozen=True)
class EmulatedRun:
    """One emulated launch: the output (NaN where nothing wrote), the launch plan and the recorded traffic."""

    y: np.ndarray
    variant: int  # the kernel version that ran (2 falls back to 1 when no version-2 plan fits)
    plan: dict[str, Any]
    traffic: dict[str, dict[str, dict[str, int]]]


def run_emulated(tool: Path, layer: BenchLayer, x: np.ndarray, *, sms: int = 132, variant: int = 1) -> EmulatedRun:
    """Run the kernel (``variant``) on ``x`` [N, C, H, W] float32 or float16 through the CPU layer."""
    dtype = str(x.dtype)
    if dtype not in ELEMENT_BYTES or variant not in KERNEL_VARIANTS:
        raise DepruneError(f"emulated kernel: dtype {dtype} / variant {variant} not supported")
    n, _, h, w = x.shape
    with tempfile.TemporaryDirectory() as work:
        fields, x_path, y_path = (Path(work) / name for name in ("fields.bin", "x.bin", "y.bin"))
        write_field_file(fields, layer_fields(layer, dtype))
        x_path.write_bytes(np.ascontiguousarray(x).tobytes())
        done = subprocess.run([str(tool), str(fields), str(x_path), str(n), str(h), str(w), dtype, str(sms),
                               str(variant), str(y_path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DepruneError(f"{layer.name}: {TOOL} exit {done.returncode}: {done.stderr.strip()}")
        y = np.fromfile(y_path, dtype=x.dtype).reshape(n, layer.params.out_channels, layer.out_height,
                                                      layer.out_width)
    report = json.loads(done.stdout)
    return EmulatedRun(y, report["variant"], report["plan"], report["traffic"])


def resident_blocks_per_sm(plan: dict[str, Any], registers_per_thread: int) -> int:
    """Blocks of this plan one SM holds at once (threads, shared memory incl. 1 KB reserved, registers)."""
    threads = plan["threads"]
    limits = [SM_LIMITS["threads"] // threads, SM_LIMITS["blocks"],
              SM_LIMITS["shared_bytes"] // (plan["shared_bytes"] + 1024),
              SM_LIMITS["registers"] // (registers_per_thread * threads)]
    return max(0, min(limits))


def in_flight_per_warp(plan: dict[str, Any], dtype: str, variant: int, request_bytes: float) -> float:
    """Input bytes one warp has requested and not yet received while staging, as the kernel's source implies.

    v1 stores each loaded element to shared memory before its next load (issue 16's SASS review): one request.
    v2 float32 issues the whole staged tile of its next channel as asynchronous copies before waiting: the tile.
    v2 float16 loads with plain loads unrolled by 4: four requests.
    """
    if variant == 2 and dtype == "float32":
        return float(plan["in_tile"][0] * plan["in_tile"][1] * ELEMENT_BYTES[dtype])
    return request_bytes * (4 if variant == 2 else 1)


def traffic_report(layer: BenchLayer, batch: int, dtype: str, run: EmulatedRun) -> dict[str, Any]:
    """Per-layer memory numbers of one emulated launch (see the module docstring)."""
    variant = run.variant
    e = ELEMENT_BYTES[dtype]
    p = layer.params
    floor = batch * e * (layer.channels_read() * layer.height * layer.width
                         + p.out_channels * layer.out_height * layer.out_width)
    x, y = run.traffic["x"]["loads"], run.traffic["y"]["stores"]
    weights = sum(entry["loads"]["bytes"] for name, entry in run.traffic.items() if name not in ("x", "y"))
    requested = x["bytes"] + y["bytes"]
    blocks = resident_blocks_per_sm(run.plan, REGISTERS_PER_THREAD[variant])
    request_bytes = x["bytes"] / x["requests"] if x["requests"] else 0.0
    in_flight = blocks * (run.plan["threads"] // 32) * in_flight_per_warp(run.plan, dtype, variant, request_bytes)
    return {
        "layer": layer.name, "shape": layer.shape_text, "batch": batch, "dtype": dtype, "variant": variant,
        "kept": layer.kept_fraction, "plan": run.plan,
        "floor_bytes": floor,
        "requested_bytes": requested, "requested_x_floor": requested / floor,
        "weight_bytes_requested": weights,
        "dram_bytes_perfect_l2": 32 * (x["unique_sectors"] + y["unique_sectors"]),
        "dram_bytes_no_block_reuse": 32 * (x["block_sectors"] + y["block_sectors"]),
        "x_sectors_per_request": x["sectors"] / x["requests"] if x["requests"] else 0.0,
        "y_sectors_per_request": y["sectors"] / y["requests"] if y["requests"] else 0.0,
        "x_bytes_per_request": request_bytes,
        "x_sector_efficiency": x["bytes"] / (32 * x["sectors"]) if x["sectors"] else 0.0,
        "y_sector_efficiency": y["bytes"] / (32 * y["sectors"]) if y["sectors"] else 0.0,
        "resident_blocks_per_sm": blocks,
        "bytes_in_flight_per_sm": in_flight,
        "needed_in_flight_per_sm": NEEDED_IN_FLIGHT_PER_SM,
    }


def format_report(rows: list[dict[str, Any]]) -> list[str]:
    """One line per layer: the columns of the README's 'memory behaviour' table."""
    lines = [f"{'layer':28s} {'shape':>18s} {'N':>3s} {'dtype':7s} {'v':>1s} {'kept':>5s} {'req/floor':>9s} "
             f"{'L2-perfect/floor':>16s} {'no-reuse/floor':>14s} {'sect/req x':>10s} {'eff x':>5s} {'sect/req y':>10s} "
             f"{'eff y':>5s} "
             f"{'KB in flight/SM':>15s}"]
    for r in rows:
        floor = r["floor_bytes"]
        lines.append(f"{r['layer']:28s} {r['shape']:>18s} {r['batch']:3d} {r['dtype']:7s} {r['variant']:1d} "
                     f"{r['kept']:5.0%} "
                     f"{r['requested_x_floor']:9.2f} {r['dram_bytes_perfect_l2'] / floor:16.2f} "
                     f"{r['dram_bytes_no_block_reuse'] / floor:14.2f} {r['x_sectors_per_request']:10.2f} "
                     f"{r['x_sector_efficiency']:5.2f} {r['y_sectors_per_request']:10.2f} "
                     f"{r['y_sector_efficiency']:5.2f} {r['bytes_in_flight_per_sm'] / 1024:15.1f}")
    return lines
