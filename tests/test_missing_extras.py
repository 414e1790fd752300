"""A missing optional dependency is one line naming the pip extra, exit 2, in every command that needs one
(issue #12.6). The module is blocked for the test (``sys.modules[name] = None`` makes every import of it raise
ModuleNotFoundError, as on a machine without it) and the CLI is invoked in-process."""
from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deprune_onnx.extras import BASE_MODULES, OPTIONAL_MODULES, install_hint
from support.cli_testing import assert_one_line_error, run_cli
from support.samples import REPO, imagenet_samples, sample_model

MODEL = sample_model("mobilenet_v3_small")


def _block(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    for name in [name for name in sys.modules if name == module or name.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)


@pytest.fixture(autouse=True)
def _modules_as_before() -> Iterator[None]:
    """sys.modules exactly as before the test: modules first imported while another was blocked (matplotlib
    half-imported without Pillow, say) must not leak into later test files."""
    saved = dict(sys.modules)
    yield
    for name in [name for name in sys.modules if name not in saved]:
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pruned")
    result = run_cli("prune", MODEL, folder / "p.onnx", "--format", "dense", "--dw-ratio", "0.5", "-q")
    assert result.exit_code == 0, result.output
    result = run_cli("prune", MODEL, folder / "plugin.onnx", "--dw-ratio", "0.5", "-q")
    assert result.exit_code == 0, result.output
    return folder / "p.onnx"


def _image() -> Path:
    return next(imagenet_samples().glob("imagenet_00_*.jpg"))


# (blocked module, command line after 'deprune-onnx'); the upper-case placeholders are filled in per test
CASES = [
    ("PIL", ["eval", MODEL, "--images", "IMAGE"]),
    ("PIL", ["compare", MODEL, "PRUNED", "--images", "IMAGE"]),
    ("PIL", ["sweep", MODEL, "--images", "IMAGE", "--ratios", "0.3", "--methods", "b", "--no-plot", "-o", "OUT"]),
    ("PIL", ["prune", MODEL, "OUT/x.onnx", "--dw-ratio", "0.5", "--calib", "IMAGE"]),
    ("PIL", ["prune", MODEL, "OUT/x.onnx", "--dw-ratio", "0.5", "--allocate", "kl", "--calib", "IMAGE"]),
    ("PIL", ["finetune", "PRUNED", "OUT/t.onnx", "--teacher", MODEL, "--images", "IMAGE", "--val-images", "IMAGE",
                  "--epochs", "1"]),
    ("matplotlib", ["report", "REPORT", "-o", "OUT/r.html"]),
    ("matplotlib", ["sweep", MODEL, "--images", "IMAGE", "--ratios", "0.3", "--methods", "b", "-o", "OUT"]),
    # checked before training, not after it (a new user's trial: the PNG failed once the model was written)
    ("matplotlib", ["finetune", "PRUNED", "OUT/t.onnx", "--teacher", MODEL, "--images", "IMAGE", "--val-images",
                    "IMAGE", "--epochs", "1"]),
    ("torch", ["finetune", "PRUNED", "OUT/t.onnx", "--teacher", MODEL, "--images", "IMAGE", "--val-images", "IMAGE",
                  "--epochs", "1"]),
    ("onnx2torch", ["finetune", "PRUNED", "OUT/t.onnx", "--teacher", MODEL, "--images", "IMAGE", "--val-images", "IMAGE",
                  "--epochs", "1"]),
    ("torch", ["bench", "PLUGIN"]),
]


# finetune imports torch before anything else it needs: blocking PIL, matplotlib or onnx2torch there needs torch
# installed.
PARAMS = [pytest.param(m, a, id=f"{m}-{' '.join(map(str, a[:1] + a[-2:]))}",
                       marks=pytest.mark.torch if a[0] == "finetune" and m != "torch" else ()) for m, a in CASES]


@pytest.mark.parametrize("module,args", PARAMS)
def test_missing_module_names_the_extra(module: str, args: list, pruned: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fill = {"PRUNED": str(pruned), "PLUGIN": str(pruned.with_name("plugin.onnx")), "REPORT": str(pruned.with_suffix(".report.json")), "IMAGE": str(_image()),
            "OUT": str(tmp_path)}
    argv = [re.sub(r"^(PRUNED|PLUGIN|REPORT|IMAGE|OUT)", lambda m: fill[m.group(1)], str(a)) for a in args]
    _block(monkeypatch, module)
    result = run_cli(*argv)
    assert_one_line_error(result, install_hint(OPTIONAL_MODULES[module][1]))
    assert OPTIONAL_MODULES[module][0] in result.output  # the distribution to install, by its PyPI name
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_the_table_matches_pyproject() -> None:
    try:
        import tomllib  # noqa: PLC0415 - Python 3.11+
    except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli, the same parser
        import tomli as tomllib  # noqa: PLC0415
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}

    extras = {extra: names(requirements) for extra, requirements in project["optional-dependencies"].items()}
    for module, (distribution, extra) in OPTIONAL_MODULES.items():
        assert distribution.lower() in extras[extra], (module, extra)
    assert set(BASE_MODULES.values()) == names(project["dependencies"])
