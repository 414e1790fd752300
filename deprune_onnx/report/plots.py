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


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def figure_png(figure: Any) -> bytes:
    """The figure as PNG bytes (closed afterwards, so long sweeps do not accumulate figures)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot().close(figure)
    return buffer.getvalue()
