"""The pruning report as one HTML page (and PNG charts beside it), rendered from ``out.report.json``.

Everything shown comes from the report, which comes from the plan: per DW layer the target and achieved PR,
Real DW, K per sub-GEMM, the HSR pattern, the tile-model speedup, params and MACs before and after, what --calib
did (output error before/after the refit) and, when --allocate measured it, the layer's sensitivity. With PW
channel removal: the DW layers' channels and params in the original model too, and a PW section (every channel
group with its channels before/after or the reason it stayed whole, every PW layer that changed, model totals).
The table's # column is the layer index the charts use on their x axis.
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


def _change(before: Any, after: Any) -> str:
    """'a &rarr; b', or just 'b' when nothing changed."""
    return _number(after) if before == after else f"{_number(before)} &rarr; {_number(after)}"


def _layer_rows(report: dict[str, Any]) -> str:
    rows = []
    pw_rows = {row["layer"]: row for row in (report.get("pw") or {}).get("dw_layers", [])}
    for position, row in enumerate(report["dw_layers"]):
        calibration = row.get("calibration") or {}
        sensitivity = row.get("sensitivity") or {}
        pw = pw_rows.get(row["name"])
        channels = _change(pw["channels_before"], row["channels"]) if pw else _number(row["channels"])
        params = (f"{_number(pw['params_before'])} &rarr; " if pw and pw["params_before"] != row.get("params")
                  else "")
        cells = [
            f"<td>{position}</td>", f'<td class="name">{html.escape(row["name"])}</td>', f"<td>{channels}</td>",
            f"<td>{'x'.join(map(str, row['kernel']))}</td>",
            f"<td>{row['strides'][0] if row.get('strides') else '-'}</td>",
            f"<td>{_number(row['target_ratio'])}</td>", f"<td>{_number(row['achieved_ratio'])}</td>",
            f"<td>{_number(row['real_dw'])}</td>", f"<td>{html.escape(str(row['pattern']))}</td>",
            f"<td>{html.escape(_kept_summary(row['kept_per_subgemm']))}</td>",
            f"<td>{_number(row['predicted_speedup'], 2)}</td>",
            f"<td>{params}{_number(row.get('params'))} &rarr; {_number(row.get('params_kept'))}</td>",
            f"<td>{_number(row.get('macs'))} &rarr; {_number(row.get('macs_kept'))}</td>",
            f"<td>{_number(calibration.get('residual_before'), 4)} &rarr; "
            f"{_number(calibration.get('residual_after'), 4)}</td>" if calibration else "<td>-</td>",
            f"<td>{_number(sensitivity.get('predicted_kl'), 4)}</td>" if sensitivity else "<td>-</td>",
            f"<td class=\"name\">{html.escape(row.get('note') or '')}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(rows)


def _short_list(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(html.escape(name) for name in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def pw_section(report: dict[str, Any]) -> str:
    """The PW channel removal as HTML: totals, every channel group (pruned, or why it stayed whole) and every
    PW layer whose channels changed; '' when the report has no PW section."""
    pw = report.get("pw")
    if not pw:
        return ""
    channels, params, macs = pw["pw_channels"], pw["params"], pw["macs"]
    summary = (f"<p>scope <b>{html.escape(str(pw['scope']))}</b>, method {html.escape(str(pw['method']))}, target "
               f"{_number(pw['target_ratio'])}, kept counts aligned to {pw['align']}: group channels "
               f"{channels['before']:,} &rarr; {channels['after']:,} (PR {_number(channels['ratio'])}); model "
               f"params {params['before']:,} &rarr; {params['after']:,}, MACs {macs['before']:,} &rarr; "
               f"{macs['after']:,}</p>")
    groups = pw["groups"]  # pruned groups first, then those left whole (the plan's order)
    group_rows = "\n".join(
        f"<tr><td class='name'>{html.escape(group['group'])}</td>"
        f"<td class='name'>{_short_list(group['producers'])}</td>"
        f"<td class='name'>{_short_list(group['readers'])}</td>"
        f"<td>{_change(group['channels_before'], group['channels_after'])}</td>"
        f"<td>{_number(group['ratio'])}</td><td>{html.escape(str(group['importance']))}</td>"
        f"<td class='name'>{'pruned' if group['pruned'] else 'whole: ' + html.escape(str(group['reason']))}"
        "</td></tr>" for group in groups)
    changed = [layer for layer in pw["layers"] if layer["out_channels_before"] != layer["out_channels_after"]
               or layer["in_channels_before"] != layer["in_channels_after"]]
    layer_rows = "\n".join(
        f"<tr><td class='name'>{html.escape(layer['layer'])}</td><td>{_number(layer['block'])}</td>"
        f"<td>{_change(layer['in_channels_before'], layer['in_channels_after'])}</td>"
        f"<td>{_change(layer['out_channels_before'], layer['out_channels_after'])}</td></tr>" for layer in changed)
    return (f"<h2>PW channel removal</h2>{summary}"
            f"<h3>Channel groups ({sum(g['pruned'] for g in groups)} pruned, "
            f"{sum(not g['pruned'] for g in groups)} left whole)</h3>"
            "<table><tr><th>group</th><th>producers</th><th>readers</th><th>channels</th><th>PR</th>"
            f"<th>importance</th><th>status</th></tr>\n{group_rows}</table>"
            f"<h3>PW layers whose channels changed ({len(changed)} of {len(pw['layers'])})</h3>"
            "<table><tr><th>PW layer</th><th>block</th><th>in channels</th><th>out channels</th></tr>\n"
            f"{layer_rows}</table>")


def render_html(report: dict[str, Any], images: list[str], title: str) -> str:
    """The page; ``images`` are PNG file names (relative to the page) to show above the table."""
    totals = report["totals"]
    speedup = totals.get("predicted_dw_speedup")
    summary = [
        f"method <b>{html.escape(str(report['method']))}</b>, tile {report['tile']}",
        f"DW PR {_number(totals['dw_ratio_achieved'], 4)} (target {_number(totals['dw_ratio_target'], 4)}), "
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
    original = " (orig. &rarr; after PW)" if report.get("pw") else ""
    header = (f"<tr><th>#</th><th>DW layer</th><th>C{original}</th><th>k</th><th>s</th><th>target</th><th>PR</th>"
              "<th>Real DW</th><th>pat.</th><th>K per sub-GEMM</th><th>speedup</th>"
              f"<th>params{original[:-1] + ' &rarr; kept)' if original else ''}</th><th>MACs</th>"
              "<th>refit error</th><th>pred. KL</th><th>note</th></tr>")
    pictures = "".join(f'<img src="{html.escape(name)}" alt="{html.escape(name)}">' for name in images)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<ul>{''.join(f'<li>{item}</li>' for item in summary)}</ul>{pictures}"
            f"<table>{header}\n{_layer_rows(report)}</table>"
            f"{f'<h2>Skipped layers</h2><ul>{skipped}</ul>' if skipped else ''}{pw_section(report)}"
            "<p class=\"note\">refit error: relative output error ||Y - Y_unpruned||&sup2; / ||Y_unpruned||&sup2; of "
            "the layer on the calibration samples, before &rarr; after the least-squares refit.</p>"
            "</body></html>\n")


def layer_figure(report: dict[str, Any]) -> Any:
    """Per-layer achieved PR (bars) and tile-model speedup (line); x = the table's # column."""
    from deprune_onnx.report.plots import pyplot

    plt = pyplot()
    rows = report["dw_layers"]
    figure, axis = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 3.6))
    x = np.arange(len(rows))
    bars = axis.bar(x, [r["achieved_ratio"] for r in rows], color="#4c72b0", label="achieved PR")
    target, = axis.plot(x, [r["target_ratio"] for r in rows], "k_", markersize=14, label="target PR")
    axis.set(ylabel="DW pruning ratio", ylim=(0, 1), xlabel="DW layer (# in the table, graph order)")
    axis.set_xticks(x)
    axis.set_xticklabels([str(i) for i in x])
    twin = axis.twinx()
    speedup, = twin.plot(x, [r["predicted_speedup"] or 1.0 for r in rows], "o-", color="#dd8452",
                         label="tile-model speedup")
    twin.set_ylabel("predicted speedup (x)")
    # One legend above the axes: two legends inside them covered bars and each other.
    axis.legend(handles=[bars, target, speedup], loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=3, fontsize=8,
                frameon=False)
    return figure


def layer_plot(report: dict[str, Any]) -> bytes:
    """``layer_figure`` as PNG bytes."""
    from deprune_onnx.report.plots import figure_png

    return figure_png(layer_figure(report))


def sensitivity_figure(report: dict[str, Any]) -> Any | None:
    """Measured KL against ratio per layer (only when --allocate measured it), chosen ratio marked; one colour
    per layer (never reused) and the full layer names in a legend beside the axes."""
    rows = [(position, r) for position, r in enumerate(report["dw_layers"]) if r.get("sensitivity")]
    if not rows:
        return None
    from deprune_onnx.report.plots import distinct_colours, pyplot

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, max(4.0, 0.19 * len(rows))))
    markers = ".os^vD"
    for (position, row), colour, index in zip(rows, distinct_colours(len(rows)), range(len(rows))):
        sensitivity = row["sensitivity"]
        axis.plot(sensitivity["measured_ratios"], sensitivity["measured_kl"], marker=markers[index % len(markers)],
                  color=colour, label=f"{position}: {row['name']}")
        axis.plot([sensitivity["chosen_ratio"]], [max(sensitivity["predicted_kl"], 1e-4)], "o", color=colour,
                  markersize=8, fillstyle="none")
    axis.set(xlabel="ratio (layer pruned alone)", ylabel="mean KL to unpruned")
    axis.set_yscale("symlog", linthresh=1e-3)
    axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axis.grid(alpha=0.3)
    return figure


def sensitivity_plot(report: dict[str, Any]) -> bytes | None:
    """``sensitivity_figure`` as PNG bytes, or None without sensitivity data."""
    from deprune_onnx.report.plots import figure_png

    figure = sensitivity_figure(report)
    return None if figure is None else figure_png(figure)
