"""``deprune-onnx report``: render OUT.report.json as an HTML page with PNG charts."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("report")
@click.argument("report_path", metavar="OUT.report.json", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False),
              metavar="REPORT.html", help="The HTML page; its PNGs go beside it (REPORT.layers.png, ...).")
@click.option("--no-plot", is_flag=True, help="HTML only, no PNG charts (no matplotlib needed).")
def command(report_path: str, output_path: str, no_plot: bool) -> None:
    """Render the per-layer pruning report written by 'prune' as HTML (and PNG charts).

    Shows per DW layer: target and achieved PR, Real DW, K per sub-GEMM, u/o pattern, tile-model speedup,
    params and MACs before/after, the --calib refit error before/after and the --allocate sensitivity.
    Charts need matplotlib (pip install 'deprune-onnx[plot]'); without it, pass --no-plot.

    \b
    Example:
      deprune-onnx prune mobilenet_v2.onnx out.onnx --dw-ratio 0.5 --allocate kl --calib calib/
      deprune-onnx report out.report.json -o report.html
    """
    from deprune_onnx.errors import DepruneError
    from deprune_onnx.report.html import layer_plot, render_html, sensitivity_plot
    from deprune_onnx.onnx_io.load_save import check_output_path, write_bytes_atomic, write_text_atomic
    from deprune_onnx.report.plots import require_matplotlib

    source = Path(report_path)
    try:
        report = json.loads(source.read_text(encoding="utf-8"))
        report["dw_layers"], report["totals"]  # noqa: B018  (the two keys every report has)
    except FileNotFoundError:
        raise DepruneError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DepruneError(f"{source}: not a deprune-onnx report ({type(exc).__name__}: {exc})") from None
    output = check_output_path(output_path, report_path)
    if not no_plot:
        require_matplotlib("report charts")
    stem = output.name[: -len(".html")] if output.name.endswith(".html") else output.name
    images: list[str] = []
    if not no_plot:
        charts = {"layers": layer_plot(report), "sensitivity": sensitivity_plot(report)}
        for name, png in charts.items():
            if png is not None:
                write_bytes_atomic(output.with_name(f"{stem}.{name}.png"), png)
                images.append(f"{stem}.{name}.png")
    write_text_atomic(output, render_html(report, images, f"deprune-onnx report: {source.name}"))
    click.echo(f"wrote {output}" + "".join(f", {output.with_name(name)}" for name in images))
