"""Which pip extra brings each optional dependency, and the one-line error when one is missing.

Why a module of its own: optional libraries (Pillow, matplotlib, PyTorch) are imported lazily inside the code
that needs them, in many places; rather than guard every import, the CLI turns any ModuleNotFoundError for one
of these modules into one line naming the pip extra to install (cli/main.py). The table must agree with the
extras of pyproject.toml (tests/test_missing_extras.py checks it).
"""
from __future__ import annotations

from deprune_onnx.errors import DepruneError

# top-level import name -> (distribution on PyPI, extra of deprune-onnx that installs it)
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "PIL": ("Pillow", "images"),
    "matplotlib": ("matplotlib", "plot"),
    "torch": ("torch", "finetune"),
    "torchvision": ("torchvision", "finetune"),
    "onnx2torch": ("onnx2torch", "finetune"),
}
# top-level import name -> distribution, for the base dependencies (missing only in a broken installation)
BASE_MODULES: dict[str, str] = {
    "numpy": "numpy",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnx_graphsurgeon": "onnx-graphsurgeon",
    "polygraphy": "polygraphy",
    "click": "click",
    "onnxconverter_common": "onnxconverter-common",
    "tqdm": "tqdm",
}


def install_hint(extra: str) -> str:
    """The pip command that installs one extra, e.g. ``pip install 'deprune-onnx[images]'``."""
    return f"pip install 'deprune-onnx[{extra}]'"


def missing_dependency_error(exc: ModuleNotFoundError, command: str | None) -> DepruneError | None:
    """One DepruneError line for a missing optional or base dependency; None for any other missing module (a
    bug of deprune-onnx, reported as such by the caller)."""
    module = (exc.name or "").split(".")[0]
    who = f"{command} needs" if command else "this needs"
    if module in OPTIONAL_MODULES:
        distribution, extra = OPTIONAL_MODULES[module]
        return DepruneError(f"{who} {distribution} (Python module '{module}' is not installed): "
                            f"{install_hint(extra)}")
    if module in BASE_MODULES:
        return DepruneError(f"{who} {BASE_MODULES[module]} (Python module '{module}' is not installed), a "
                            "dependency of deprune-onnx: reinstall it with pip install deprune-onnx")
    return None
