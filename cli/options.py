"""Option parsers shared by several commands."""
from __future__ import annotations

import click


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
