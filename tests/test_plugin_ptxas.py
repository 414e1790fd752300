"""The CUDA kernels compile without register spills or a stack frame for sm_80 and sm_90 (ptxas -v).

Why: a spill turns register traffic into local-memory traffic, which a memory-bound kernel cannot afford (issue 16:
version 1 spilled under __launch_bounds__(256, 4) with an older source). nvcc and ptxas run here without a GPU.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from deprune_onnx.trt.native import SOURCE_ROOT

pytestmark = pytest.mark.native

KERNEL = SOURCE_ROOT / "trt_plugins" / "dr_sparse_dwconv" / "drSparseDwConvKernel.cu"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_no_spills_for_sm80_and_sm90(tmp_path) -> None:
    done = subprocess.run(
        ["nvcc", "-std=c++17", "--expt-relaxed-constexpr", "-Xptxas", "-v", "-c", str(KERNEL), "-o",
         str(tmp_path / "kernel.o"), "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"],
        capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = done.stdout + done.stderr
    entries = re.findall(r"Compiling entry function '(\w+)' for '(sm_\d+)'.*?(\d+) bytes stack frame, (\d+) bytes "
                         r"spill stores, (\d+) bytes spill loads", report, flags=re.S)
    kernels = {(name, arch) for name, arch, *_ in entries}
    # Both versions (v1: float, __half; v2: float, __half x rx 1, 2, 4) for both architectures.
    assert len(kernels) == 2 * (2 + 6), sorted(kernels)
    assert {arch for _, arch in kernels} == {"sm_80", "sm_90"}
    spilling = [(name, arch, frame, stores, loads) for name, arch, frame, stores, loads in entries
                if int(stores) or int(loads) or int(frame)]
    assert not spilling, spilling
