"""The suite is self-contained (issue #12.1): tests read nothing outside the repository and the installed packages.

Two checks. A static one: no test source names the shared folder beside the checkout or an absolute machine path.
A dynamic one: the repository's files (what `git clone` of the working state would give: tracked plus untracked,
not ignored) are copied into an empty temporary folder, installed editable into a fresh venv whose dependencies
come from this interpreter's site-packages, and a representative subset of the suite (real models, packaged
images, golden outputs, every image command) runs there under an audit hook that logs every file and folder
Python opens. Any path outside the clone, the temporary folders and the Python installation fails the test.
Reads done by native code (ONNX Runtime opening a model by path) raise no audit event and are not seen.
"""
from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from support.samples import REPO

# Tests from the clone: README's commands, real models + packaged images through eval/compare/report, the golden
# files of tests/data, the sweep.
SUBSET = ["tests/test_readme.py", "tests/test_eval.py", "tests/test_compare.py::test_real_model_with_images",
          "tests/test_sweep_report.py",
          "tests/test_golden.py::test_prune_writes_the_recorded_bytes[mobilenet_v2__b-0.3-calib-dense]",
          "tests/test_golden.py::test_version1_plan_reapplies_to_the_recorded_bytes[mobilenet_v2__b-0.5-dense]"]
# The audit hook, loaded into the clone's pytest as a plugin (-p) before any test module is imported.
AUDIT_PLUGIN = '''
import atexit, os, sys
_seen = set()
def _hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _seen.add(os.path.abspath(os.fsdecode(args[0])))
sys.addaudithook(_hook)
def _write():
    with open(os.environ["DEPRUNE_OPEN_AUDIT_LOG"], "w") as log:
        log.write("\\n".join(sorted(_seen)))
atexit.register(_write)
'''
SHARED_BESIDE = ".." + "/shared"  # spelled in two parts so this file passes its own check
MACHINE_ROOT = "/" + "work/"


def test_no_test_names_the_shared_folder_or_a_machine_path() -> None:
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        text = path.read_text()
        offenders += [f"{path.relative_to(REPO)}: {needle}" for needle in (SHARED_BESIDE, MACHINE_ROOT)
                      if needle in text]
    assert offenders == []


# What .gitignore keeps out of a checkout: the fallback listing of an unpacked source archive skips the same.
_IGNORED_PARTS = {".git", ".venv", "__pycache__", "build", ".pytest_cache", ".hypothesis", "out", ".whl"}


def _repository_files() -> list[str]:
    """The checkout's files as git lists them (tracked + untracked, not ignored); outside a git checkout (an
    unpacked source archive) every file that .gitignore would not exclude."""
    try:
        listing = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard"], capture_output=True, check=True)
        names = listing.stdout.decode().split("\0")
    except (FileNotFoundError, subprocess.CalledProcessError):
        names = [str(path.relative_to(REPO)) for path in REPO.rglob("*")
                 if not _IGNORED_PARTS.intersection(path.relative_to(REPO).parts)
                 and not any(part.endswith(".egg-info") for part in path.parts)
                 and path.relative_to(REPO).parts[:2] != ("bench", ".work")]
    return [name for name in names if name and (REPO / name).is_file()]


def _environment_roots() -> list[Path]:
    """The Python installation and its packages, which may sit inside the original checkout (its .venv)."""
    roots = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sysconfig.get_paths()["stdlib"]),
             *map(Path, site.getsitepackages()), Path(site.getusersitepackages())]
    return [root.resolve() for root in roots]


def _allowed_roots(clone: Path, scratch: Path) -> list[Path]:
    """Where the clone's tests may read: the clone, temporary folders, the user's caches (matplotlib's font
    cache), the operating system and the Python environment."""
    roots = [clone, scratch, Path(tempfile.gettempdir()), Path.home() / ".cache", Path.home() / ".config"]
    roots += [Path(p) for p in ("/proc", "/sys", "/dev", "/etc", "/usr", "/lib", "/lib64", "/bin")]
    return [root.resolve() for root in roots] + _environment_roots()


def _is_outside(path: Path, allowed: list[Path], environment: list[Path]) -> bool:
    """Outside the allowed roots, or inside the original checkout or the shared folder beside it (even when
    those lie under an allowed root such as /tmp), unless it is part of the Python environment."""
    candidates = {path, Path(os.path.realpath(path))}
    if any(c.is_relative_to(root) for c in candidates for root in environment):
        return False
    if any(c.is_relative_to(root) for c in candidates for root in (REPO, REPO.parent / "shared")):
        return True
    return not any(c.is_relative_to(root) for c in candidates for root in allowed)


@pytest.mark.model
def test_a_fresh_clone_reads_nothing_outside_itself(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    for name in _repository_files():
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    venv_site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()"
                                     "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    # Dependencies from this interpreter (a .pth path entry: its own .pth files, such as the editable install of
    # the original checkout, stay inactive); deprune-onnx itself installed editable from the clone.
    (venv_site / "zz_dependencies.pth").write_text(
        "\n".join(p for p in site.getsitepackages() if Path(p).resolve() != REPO) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "--python",
                    venv / "bin" / "python", "install", "--no-deps", "--no-build-isolation", "-e", clone],
                   check=True, capture_output=True)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "deprune_open_audit.py").write_text(AUDIT_PLUGIN)
    log = tmp_path / "opened.txt"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "PYTEST"))}
    env.update(PYTHONPATH=str(hook), DEPRUNE_OPEN_AUDIT_LOG=str(log))
    run = subprocess.run([venv / "bin" / "python", "-m", "pytest", "-q", "-p", "deprune_open_audit", "-p",
                          "no:cacheprovider", "--basetemp", tmp_path / "basetemp", *SUBSET], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert re.search(r"\b(\d+) passed", run.stdout) and " skipped" not in run.stdout.splitlines()[-1], run.stdout
    opened = [Path(line) for line in log.read_text().splitlines()]
    assert any(path.is_relative_to(clone / "samples") for path in opened)  # the hook saw the models being read
    allowed, environment = _allowed_roots(clone, tmp_path), _environment_roots()
    outside = sorted({str(path) for path in opened if _is_outside(path, allowed, environment)})
    assert outside == []
