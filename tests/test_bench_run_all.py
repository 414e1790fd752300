"""bench/gpu/run_all.sh, checked without a GPU: it parses, it writes at most the 8 result files the device tool
brings back from $OUT (bench/gpu/README.md), it stops at once with one line when the bench wheels are missing,
and the kernel check imports nothing the GPU machines lack (onnx-graphsurgeon, polygraphy, onnxconverter-common,
TensorRT), checked by running it with those packages blocked up to the point where it needs a GPU."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu" / "run_all.sh"
CHECK = REPO / "bench" / "gpu" / "dr_dwconv_check.py"
FINETUNE_SMOKE = REPO / "bench" / "gpu" / "finetune_smoke.sh"
REPORT = REPO / "bench" / "gpu" / "report.py"
H200_RUN = REPO / "bench" / "results" / "gpu_run_20261130T002905Z"

# A meta-path hook that makes the packages absent on the GPU machines unimportable, then runs a script.
BLOCKER = textwrap.dedent("""
    import importlib.abc, runpy, sys
    BLOCKED = {"onnx_graphsurgeon", "polygraphy", "onnxconverter_common", "tensorrt"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: absent on the GPU machine")
    sys.meta_path.insert(0, Block())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    script, *sys.argv = sys.argv[1:]
    sys.argv.insert(0, script)
    runpy.run_path(script, run_name="__main__")
""")


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_at_most_eight_result_files_named_in_the_readme() -> None:
    # One device call runs run_all.sh and then finetune_smoke.sh; together they fill at most the 8 files it returns.
    text = SCRIPT.read_text() + FINETUNE_SMOKE.read_text()
    names = set(re.findall(r'\$RESULTS/([A-Za-z0-9_.$-]+)', text))
    files = set()
    for name in names:
        if name.startswith("$tool"):  # the sanitizer loop: for tool in memcheck racecheck
            files |= {name.replace("$tool", tool) for tool in ("memcheck", "racecheck")}
        elif "*" not in name and "$" not in name:
            files.add(name)
    assert {"run_all.log", "summary.txt", "dr_dwconv_check.json", "memcheck.log", "racecheck.log",
            "finetune_smoke.log", "finetune_cuda.json"} <= files
    assert len(files) <= 8, sorted(files)
    readme = (SCRIPT.parent / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in files), sorted(files)


def test_missing_wheels_stop_the_script_at_once_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DEPRUNE_WHEELS": str(tmp_path / "no_wheels")}
    done = subprocess.run(["bash", str(SCRIPT), "check", "bench"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "no onnx_graphsurgeon wheel" in lines[0] and "README.md" in lines[0], done.stdout
    assert not (tmp_path / "out").exists()  # nothing ran: no GPU time spent


def test_every_phase_has_a_time_budget() -> None:
    text = SCRIPT.read_text()
    # Every step goes through step NAME BUDGET ..., which runs the command under timeout.
    steps = re.findall(r'^\s*(?:\S+=\S+ )?step (\S+) (\S+) ', text, flags=re.M)
    assert {name for name, _ in steps} >= {"build", "host-tests", '"$tool"', "check", "bench-float32"}
    assert all(re.fullmatch(r'\d+|"\$\{[A-Z_]+:-\d+\}"|"?\$check_budget"?', budget) for _, budget in steps), steps
    assert 'timeout --kill-after=5 "$budget"' in text
    defaults = [int(v) for v in re.findall(r'BUDGET:-(\d+)', text)]
    total = int(re.search(r'TOTAL_BUDGET=\$\{TOTAL_BUDGET:-(\d+)\}', text).group(1))
    assert total <= 480 and all(v <= total for v in defaults)


def _run_blocked(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # never a GPU here, even on a machine that has one
    return subprocess.run([sys.executable, "-c", BLOCKER, *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


@pytest.mark.model  # the prune pipeline on two whole architectures, in subprocesses (37 s under load)
def test_kernel_check_runs_without_the_packages_the_gpu_machine_lacks(tmp_path: Path) -> None:
    # The layer preparation (prune pipeline, bh masks, packing, bytes and floors) runs in full ...
    roofline = _run_blocked(str(CHECK), "--roofline-only")
    assert roofline.returncode == 0, roofline.stderr[-2000:]
    assert "total mobilenet_v2" in roofline.stdout and "total efficientnet_b0" in roofline.stdout
    # ... and the check proper gets as far as asking for the GPU: one line, exit 2, no ImportError.
    check = _run_blocked(str(CHECK), "--quick")
    assert check.returncode == 2, check.stderr[-2000:]
    assert "CUDA" in check.stderr and "ImportError" not in check.stderr and "blocked" not in check.stderr
    # The modules the GPU part imports lazily load too.
    imports = tmp_path / "imports.py"
    imports.write_text("import deprune_onnx.trt.native, deprune_onnx.onnx_io.load_save, deprune_onnx.trt.layer_bench\n")
    lazy = _run_blocked(str(imports))
    assert lazy.returncode == 0, lazy.stderr[-2000:]


def test_finetune_smoke_parses_and_stops_at_once_without_images(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(FINETUNE_SMOKE)], check=True)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "IMAGES": str(tmp_path / "no_images")}
    done = subprocess.run(["bash", str(FINETUNE_SMOKE)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "no_images" in lines[0] and "imagenet_" in lines[0], done.stdout
    assert not (tmp_path / "out").exists()


def test_deprune_runs_through_the_shim_not_the_checkout() -> None:
    # Run from the repository root, `python -m` puts the checkout first on sys.path, and its deprune_onnx has no
    # cli (pyproject maps cli/ there): on the H200 this stopped both bench steps at once (2026-11-30).
    for script in (SCRIPT, FINETUNE_SMOKE):
        calls = re.findall(r'^.*-m deprune_onnx\.cli\.main.*$', script.read_text(), flags=re.M)
        assert calls and all("PYTHONSAFEPATH=1" in call for call in calls), (script.name, calls)


def test_report_renders_the_committed_h200_results() -> None:
    import json  # noqa: PLC0415

    check = json.loads((H200_RUN / "dr_dwconv_check.json").read_text())
    done = subprocess.run([sys.executable, str(REPORT), str(H200_RUN / "dr_dwconv_check.json")], capture_output=True,
                          text=True, timeout=120, check=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| mobilenet_v2 PR 0.50 | 32 | float32 |")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    totals = {t["kernel"]: t for t in check["totals"]
              if (t["group"], t["batch"], t["dtype"]) == ("mobilenet_v2 PR 0.50", 32, "float32")}
    assert cells[4:8] == [f"{totals[1]['ours_us']:.1f}", f"{totals[2]['ours_us']:.1f}",
                          f"{totals[2]['cudnn_us']:.1f}", f"{totals[2]['floor_us']:.1f}"]
    assert cells[9] == f"{totals[2]['cudnn_us'] / totals[2]['ours_us']:.2f}x"
    # Every layer run of the check appears in the counts the report states.
    assert f"Layer runs checked against the float64 reference: {len(check['layers'])}, failures 0" in done.stdout
