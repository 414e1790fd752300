"""Never slower than dense: which pruned DW layers become DRSparseDepthwiseConv (`prune --format auto`).

Why: a sparse DW kernel only pays where it beats the native depthwise conv of the target (cuDNN, or TensorRT's
own tactic) at the user's batch and dtype; at small maps or low pruning ratios it may not. `deprune-onnx tune`
times both on the GPU for every layer of a pruned model and writes a timings file (``timings_document``);
`prune --format auto --timings FILE` then rewrites only the layers where ours was measured faster and keeps the
others as standard Conv with the same masked weights (``decide_rewrites``). Every layer gets a reason, which the
report carries and prune prints.

Timings file (JSON): {"format": "deprune-onnx-timings", "version": 1, "device", "batch", "dtype", "command",
"date", "layers": [{"name", "shape", "kept_taps", "ours_us", "native_us", "ok", "max_rel_err"}, ...]}; times in
microseconds per launch, "ok" false when our kernel failed its correctness check on that layer.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deprune_onnx.errors import DepruneError

TIMINGS_FORMAT = "deprune-onnx-timings"
TIMINGS_VERSION = 1


@dataclass(frozen=True)
class LayerTiming:
    """One layer's measurement: our kernel and the native DW conv, microseconds per launch."""

    name: str
    kept_taps: int
    ours_us: float
    native_us: float
    ok: bool


@dataclass(frozen=True)
class Timings:
    """A loaded timings file."""

    path: str
    device: str
    batch: int
    dtype: str
    layers: dict[str, LayerTiming]


def timings_document(results: Sequence[Any], kept_taps: dict[str, int], *, device: str, batch: int, dtype: str,
                     command: str, date: str) -> dict[str, Any]:
    """The timings file's content from layer_bench.LayerResult objects (one per layer, all at ``batch``)."""
    return {
        "format": TIMINGS_FORMAT, "version": TIMINGS_VERSION, "device": device, "batch": batch, "dtype": dtype,
        "command": command, "date": date,
        "layers": [{"name": r.layer, "shape": r.shape, "kept_taps": kept_taps[r.layer], "ours_us": r.ours_us,
                    "native_us": r.cudnn_us, "ok": r.ok, "max_rel_err": r.max_rel_err} for r in results],
    }


def load_timings(path: str | Path) -> Timings:
    """Read and check a timings file; one-line DepruneError naming the file (and the entry) when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DepruneError(f"{path}: cannot read timings ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != TIMINGS_FORMAT:
        raise DepruneError(f"{path}: not a timings file of `deprune-onnx tune` (no \"format\": \"{TIMINGS_FORMAT}\")")
    if data.get("version") != TIMINGS_VERSION:
        raise DepruneError(f"{path}: timings version {data.get('version')!r}, this deprune-onnx reads "
                           f"{TIMINGS_VERSION}; run `deprune-onnx tune` again")
    layers: dict[str, LayerTiming] = {}
    try:
        batch, dtype = int(data["batch"]), str(data["dtype"])
        for index, entry in enumerate(data["layers"]):
            timing = LayerTiming(str(entry["name"]), int(entry["kept_taps"]), float(entry["ours_us"]),
                                 float(entry["native_us"]), bool(entry["ok"]))
            if not (math.isfinite(timing.ours_us) and math.isfinite(timing.native_us)) or min(
                    timing.ours_us, timing.native_us) <= 0:
                raise ValueError(f"layer {index} ('{timing.name}'): times must be finite and > 0")
            layers[timing.name] = timing
    except (KeyError, TypeError, ValueError) as exc:
        raise DepruneError(f"{path}: malformed timings ({type(exc).__name__}: {exc})") from None
    return Timings(str(path), str(data.get("device", "?")), batch, dtype, layers)


@dataclass(frozen=True)
class RewriteDecision:
    """Whether one pruned DW layer becomes the custom op, and why."""

    layer: str
    rewrite: bool
    reason: str
    ours_us: float | None = None
    native_us: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_rewrites(plan_layers: Sequence[Any], timings: Timings, dtype: str) -> list[RewriteDecision]:
    """One decision per pruned DW layer of the plan (``DWLayerPlan``; excluded layers, method none, are skipped).

    A layer is rewritten only when the file times it on the same mask (same kept tap count), our kernel passed
    its check there, and ours was strictly faster than the native conv. Raises DepruneError when the file was
    measured in another dtype than the model being written (its numbers would not apply to any layer).
    """
    if timings.dtype != dtype:
        raise DepruneError(f"--timings {timings.path}: measured in {timings.dtype}, this prune writes {dtype}; run "
                           f"`deprune-onnx tune` on a {dtype} model")
    decisions = []
    for layer in plan_layers:
        if layer.method == "none":
            continue
        kept = int(layer.keep_mask().sum())
        timing = timings.layers.get(layer.name)
        if timing is None:
            decisions.append(RewriteDecision(layer.name, False, f"not in {timings.path}: kept as Conv"))
            continue
        times = {"ours_us": timing.ours_us, "native_us": timing.native_us}
        if timing.kept_taps != kept:
            reason = (f"timed with {timing.kept_taps} kept taps, this plan keeps {kept} (another mask): kept as "
                      "Conv; tune the model pruned with these options")
            decisions.append(RewriteDecision(layer.name, False, reason, **times))
        elif not timing.ok:
            decisions.append(RewriteDecision(layer.name, False, "our kernel failed its correctness check here: "
                                             "kept as Conv", **times))
        elif timing.ours_us < timing.native_us:
            reason = (f"ours {timing.ours_us:.1f} us < native {timing.native_us:.1f} us "
                      f"({timing.native_us / timing.ours_us:.2f}x) at batch {timings.batch}")
            decisions.append(RewriteDecision(layer.name, True, reason, **times))
        else:
            reason = (f"native {timing.native_us:.1f} us <= ours {timing.ours_us:.1f} us at batch {timings.batch}: "
                      "kept as Conv")
            decisions.append(RewriteDecision(layer.name, False, reason, **times))
    return decisions


def format_decisions(decisions: Sequence[dict[str, Any]]) -> list[str]:
    """prune's lines for --format auto: one per layer, rewritten or not, with the reason."""
    rewritten = sum(d["rewrite"] for d in decisions)
    lines = [f"--format auto: {rewritten} of {len(decisions)} pruned DW layer(s) -> DRSparseDepthwiseConv"]
    lines += [f"  {d['layer']}: {'rewritten' if d['rewrite'] else 'Conv'} ({d['reason']})" for d in decisions]
    return lines
