"""Option parsers shared by several commands, and the flag name of every library option.

The commands only map flags to ``deprune_onnx.options`` types; the rules live there. A library OptionError
names parameters the library way (``dw.dw_ratio``); ``cli/main.py`` renders it with FLAG_NAMES (``--dw-ratio``).
"""
from __future__ import annotations

import click

# Library parameter (deprune_onnx.options) -> the flag that sets it.
FLAG_NAMES = {
    "dw.method": "--method", "dw.dw_ratio": "--dw-ratio", "dw.layer_ratios": "--layer-ratio",
    "dw.exclude": "--exclude", "dw.tile": "--tile", "dw.hsr_alphas": "--hsr-timings",
    "dw.layer_timings": "--hsr-timings", "dw.hsr_rank": "--hsr-rank", "dw.target_speedup": "--target-speedup",
    "pw.ratio": "--pw-ratio", "pw.align": "--pw-align", "pw.scope": "--pw-scope", "pw.method": "--pw-method",
    "output_format": "--format", "timings": "--timings", "dtype": "--dtype", "keep_zeros": "--keep-zeros", "plan": "--plan",
    "calib.sources": "--calib", "calib.n": "--calib-n", "calib.preprocess": "--calib-preprocess",
    "calib.crops": "--calib-crops", "calib.damp": "--calib-damp", "calib.saliency": "--calib-saliency",
    "calib.refit": "--refit", "calib.project": "--calib-project", "calib.allocate": "--allocate",
    "calib.allocate_ratios": "--allocate-ratios", "calib.allocate_samples": "--allocate-samples",
}


def parse_layer_ratios(values: tuple[str, ...]) -> list[tuple[str, float]]:
    """``NAME=R`` pairs (NAME may be a glob); the last '=' splits, so names may contain '='."""
    pairs: list[tuple[str, float]] = []
    for value in values:
        name, sep, ratio = value.rpartition("=")
        if not sep or not name:
            raise click.BadParameter(f"'{value}': expected NAME=RATIO", param_hint="'--layer-ratio'")
        try:
            pairs.append((name, float(ratio)))
        except ValueError:
            raise click.BadParameter(f"'{value}': '{ratio}' is not a number", param_hint="'--layer-ratio'")
    return pairs


def parse_ratio_list(value: str, option: str) -> tuple[float, ...]:
    """'0.3,0.5,0.7' -> (0.3, 0.5, 0.7)."""
    try:
        ratios = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"'{value}': expected comma-separated numbers", param_hint=f"'{option}'")
    if not ratios:
        raise click.BadParameter(f"'{value}': no ratio given", param_hint=f"'{option}'")
    return ratios
