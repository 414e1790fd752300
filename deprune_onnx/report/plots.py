"""Matplotlib, as an optional extra (``pip install deprune-onnx[plot]``): the headless backend, PNG bytes, and one
clear error where it is missing. Nothing else in deprune-onnx needs it."""
from __future__ import annotations

from typing import Any

from deprune_onnx.errors import DepruneError


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise DepruneError("plots need matplotlib: pip install 'deprune-onnx[plot]' (or pass --no-plot)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def require_matplotlib(what: str) -> None:
    """A DepruneError naming ``what`` (the chart or file to be drawn) unless matplotlib is installed: checked
    before the command's work, so a missing extra never fails a finished run."""
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "matplotlib":
            raise  # matplotlib is there but one of its own dependencies (Pillow) is not: the CLI names its extra
        raise DepruneError(f"{what} needs matplotlib: pip install 'deprune-onnx[plot]', or pass --no-plot") from None


def distinct_colours(count: int) -> list[tuple[float, float, float, float]]:
    """``count`` RGBA colours, none repeated (matplotlib's colour cycle repeats after 10): tab10 or tab20 while
    they last, then evenly spaced points of the perceptual 'turbo' map."""
    import numpy as np

    plt = pyplot()
    if count <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(count)]
    if count <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(count)]
    return [plt.get_cmap("turbo")(float(x)) for x in np.linspace(0.0, 1.0, count)]


def figure_png(figure: Any) -> bytes:
    """The figure as PNG bytes (closed afterwards, so long sweeps do not accumulate figures). The saved area
    grows to hold everything drawn, so a legend placed beside the axes is never cut off."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()
