"""Native libraries: the CUDA kernel library's C ABI (built whenever nvcc exists) and the TensorRT plugin
(compiled warning-free at -Wall -Wextra -Werror when $DEPRUNE_TRT_INCLUDE names TensorRT headers; checked against
the TensorRT 11.1 headers). Nothing here runs on a GPU: ctypes calls only the pure-host drdwPlanLaunch."""
from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest

from support.plugin_native import build_test_native, has_nvcc
from deprune_onnx.trt.layer_bench import DRDW_ABI_VERSION, Problem  # the kernel ABI the benchmark passes
from deprune_onnx.trt.native import KERNEL_C_ABI, LIBRARY_FILES, find_tensorrt_include, tensorrt_header_version

pytestmark = pytest.mark.native

needs_nvcc = pytest.mark.skipif(not has_nvcc(), reason="nvcc not found: the CUDA kernel library is not built")
needs_trt = pytest.mark.skipif(find_tensorrt_include(None) is None,
                               reason="set DEPRUNE_TRT_INCLUDE to TensorRT headers to compile the plugin")


@pytest.fixture(scope="module")
def build_dir() -> Path:
    return build_test_native()


def exported(library: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}


class Plan(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in (
        "tileH", "tileW", "inTileH", "inTileW", "channelsPerBlock", "inChannelsPerBlock", "slicesPerSubgemm",
        "tilesH", "tilesW", "threads", "gridX", "gridY", "gridZ")] + [("sharedBytes", ctypes.c_int64)]


@needs_nvcc
def test_kernel_library_exports_the_c_abi_only(build_dir: Path) -> None:
    symbols = exported(build_dir / LIBRARY_FILES["kernels"])
    assert set(KERNEL_C_ABI) <= symbols
    assert not [s for s in symbols if s.startswith("_ZN7deprune")], "C++ internals must stay hidden"


@needs_nvcc
def test_kernel_library_plans_through_ctypes_without_a_gpu(build_dir: Path) -> None:
    library = ctypes.CDLL(str(build_dir / LIBRARY_FILES["kernels"]))
    assert library.drdwAbiVersion() == DRDW_ABI_VERSION == 2
    problem = Problem(batch=1, channels=960, depthMultiplier=1, inH=7, inW=7, outH=7, outW=7, kernelH=5, kernelW=5,
                      strideH=1, strideW=1, dilationH=1, dilationW=1, padTop=2, padLeft=2, subgemmChannels=32)
    plan = Plan()
    assert library.drdwPlanLaunch(ctypes.byref(problem), 2, 132, ctypes.byref(plan)) == 0
    assert (plan.channelsPerBlock, plan.gridY, plan.gridZ, plan.threads) == (8, 120, 1, 256)
    problem.kernelH = 16
    library.drdwStatusString.restype = ctypes.c_char_p
    status = library.drdwPlanLaunch(ctypes.byref(problem), 2, 132, ctypes.byref(plan))
    assert status == -2 and b"invalid problem" in library.drdwStatusString(status)


@needs_nvcc
@needs_trt
def test_plugin_libraries_compile_warning_free_with_the_right_entry_points(build_dir: Path) -> None:
    version = tensorrt_header_version(find_tensorrt_include(None))
    assert version.split(".")[0] in ("10", "11"), version
    # build_test_native builds with -Wall -Wextra -Werror: reaching here means no warning. Entry points:
    dynamic = exported(build_dir / LIBRARY_FILES["dynamic"])
    static = exported(build_dir / LIBRARY_FILES["plugin"])
    assert {"getCreators", "setLoggerFinder"} <= dynamic
    assert not {"getCreators", "setLoggerFinder"} & static, "the self-registering library must not also export"
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(build_dir / LIBRARY_FILES["plugin"])],
                               capture_output=True, text=True, check=True).stdout
    assert "getPluginRegistry" not in undefined, "libnvinfer is found at load time, not linked"
