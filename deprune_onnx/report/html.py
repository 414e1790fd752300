"""The pruning report as one HTML page (and PNG charts beside it), rendered from ``out.report.json``.

Everything shown comes from the report, which comes from the plan: per DW layer the target and achieved PR,
Real DW, K per sub-GEMM, the HSR pattern, the tile-model speedup, params and MACs before and after, what --calib
did (output error before/after the refit) and, when --allocate measured it, the layer's sensitivity.
"""
from __future__ import annotations

import html
from typing import Any

import numpy as np

from deprune_onnx.report.build import _kept_summary

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f2f2f2}td.name{text-align:left;
font-family:monospace}img{max-width:100%;margin:1em 0}.note{color:#666}"""


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else html.escape(str(value))


def _layer_rows(report: dict[str, Any]) -> str:
    rows = []
    for row in report["dw_layers"]:
        calibration = row.get("calibration") or {}
        sensitivity = row.get("sensitivity") or {}
        cells = [
            f'<td class="name">{html.escape(row["name"])}</td>', f"<td>{row['channels']}</td>",
            f"<td>{'x'.join(map(str, row['kernel']))}</td>",
            f"<td>{row['strides'][0] if row.get('strides') else '-'}</td>",
            f"<td>{_number(row['target_ratio'])}</td>", f"<td>{_number(row['achieved_ratio'])}</td>",
            f"<td>{_number(row['real_dw'])}</td>", f"<td>{html.escape(str(row['pattern']))}</td>",
            f"<td>{html.escape(_kept_summary(row['kept_per_subgemm']))}</td>",
            f"<td>{_number(row['predicted_speedup'], 2)}</td>",
            f"<td>{_number(row.get('params'))} &rarr; {_number(row.get('params_kept'))}</td>",
            f"<td>{_number(row.get('macs'))} &rarr; {_number(row.get('macs_kept'))}</td>",
            f"<td>{_number(calibration.get('residual_before'), 4)} &rarr; "
            f"{_number(calibration.get('residual_after'), 4)}</td>" if calibration else "<td>-</td>",
            f"<td>{_number(sensitivity.get('predicted_kl'), 4)}</td>" if sensitivity else "<td>-</td>",
            f"<td class=\"name\">{html.escape(row.get('note') or '')}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(rows)


def render_html(report: dict[str, Any], images: list[str], title: str) -> str:
    """The page; ``images`` are PNG file names (relative to the page) to show above the table."""
    totals = report["totals"]
    speedup = totals.get("predicted_dw_speedup")
    summary = [
        f"method <b>{html.escape(str(report['method']))}</b>, tile {report['tile']}",
        f"DW PR {_number(totals['dw_ratio_achieved'], 4)} (target {_number(totals['dw_ratio_target'])}), "
        f"Real DW {_number(totals['real_dw_min'], 4)}",
        f"DW weights {totals['dw_weights']:,} &rarr; {totals['dw_kept_weights']:,}",
    ]
    if totals.get("dw_pattern"):
        summary.append(f"DW-Pat. {html.escape(totals['dw_pattern'])}")
    if speedup:
        summary.append(f"predicted DW speedup {speedup:.2f}x (tile cost model, not a measurement)")
    calibration = report.get("calibration")
    if calibration:
        summary.append(f"calibrated reconstruction on {calibration['samples']} samples "
                       f"({len(calibration['images'])} images x {calibration['views']} views), "
                       f"damping {calibration['damp']}{', saliency re-selection' if calibration['saliency'] else ''}")
    allocation = report.get("allocation")
    if allocation:
        summary.append(f"ratios allocated by measured {html.escape(allocation['method'])} sensitivity: target "
                       f"{allocation['target_ratio']}, allocated {allocation['allocated_ratio']:.4f}, predicted KL "
                       f"sum {allocation['predicted_kl_sum']:.4f}")
    skipped = "".join(f"<li>{html.escape(s['name'])}: {html.escape(s['reason'])}</li>"
                      for s in totals.get("skipped_layers", []))
    header = ("<tr><th>DW layer</th><th>C</th><th>k</th><th>s</th><th>target</th><th>PR</th><th>Real DW</th>"
              "<th>pat.</th><th>K per sub-GEMM</th><th>speedup</th><th>params</th><th>MACs</th>"
              "<th>refit error</th><th>pred. KL</th><th>note</th></tr>")
    pictures = "".join(f'<img src="{html.escape(name)}" alt="{html.escape(name)}">' for name in images)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<ul>{''.join(f'<li>{item}</li>' for item in summary)}</ul>{pictures}"
            f"<table>{header}\n{_layer_rows(report)}</table>"
            f"{f'<h2>Skipped layers</h2><ul>{skipped}</ul>' if skipped else ''}"
            "<p class=\"note\">refit error: relative output error ||Y - Y_unpruned||&sup2; / ||Y_unpruned||&sup2; of "
            "the layer on the calibration samples, before &rarr; after the least-squares refit.</p>"
            "</body></html>\n")


def layer_plot(report: dict[str, Any]) -> bytes:
    """Per-layer achieved PR (bars) and tile-model speedup (line)."""
    from deprune_onnx.report.plots import figure_png, pyplot

    plt = pyplot()
    rows = report["dw_layers"]
    figure, axis = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 3.6))
    x = np.arange(len(rows))
    axis.bar(x, [r["achieved_ratio"] for r in rows], color="#4c72b0", label="achieved PR")
    axis.plot(x, [r["target_ratio"] for r in rows], "k_", markersize=14, label="target PR")
    axis.set(ylabel="DW pruning ratio", ylim=(0, 1), xlabel="DW layer (graph order)")
    axis.set_xticks(x)
    axis.set_xticklabels([str(i) for i in x])
    twin = axis.twinx()
    twin.plot(x, [r["predicted_speedup"] or 1.0 for r in rows], "o-", color="#dd8452", label="tile-model speedup")
    twin.set_ylabel("predicted speedup (x)")
    axis.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    return figure_png(figure)


def sensitivity_plot(report: dict[str, Any]) -> bytes | None:
    """Measured KL against ratio per layer (only when --allocate measured it), chosen ratio marked."""
    rows = [r for r in report["dw_layers"] if r.get("sensitivity")]
    if not rows:
        return None
    from deprune_onnx.report.plots import figure_png, pyplot

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for position, row in enumerate(rows):
        sensitivity = row["sensitivity"]
        line, = axis.plot(sensitivity["measured_ratios"], sensitivity["measured_kl"], marker=".",
                          label=f"{position}: {row['name'][-28:]}")
        axis.plot([sensitivity["chosen_ratio"]], [max(sensitivity["predicted_kl"], 1e-4)], "o",
                  color=line.get_color(), markersize=8, fillstyle="none")
    axis.set(xlabel="ratio (layer pruned alone)", ylabel="mean KL to unpruned")
    axis.set_yscale("symlog", linthresh=1e-3)
    axis.legend(fontsize=6, ncol=2)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure_png(figure)
