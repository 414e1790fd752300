"""Every case of the bad-input corpus (tests/bad_inputs.py) through the real CLI.

Each case ends in exactly one of two ways: a correct result (the output passes onnx.checker, runs in ONNX
Runtime, and its DW weights are the input's weights times the plan's masks), or one error line on stderr with
exit code 2. Either way no traceback, no partial or temporary file left behind, and every input byte unchanged.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from support.bad_inputs import CASES, OK, Case
from support.samples import SAMPLE_MODEL
from deprune_onnx.cli.main import main
from deprune_onnx.op.lower import lower
from deprune_onnx.onnx_io.graph import GraphIndex
from deprune_onnx.plan import PruningPlan
from support.op_testing import random_feeds

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
IS_ROOT = os.geteuid() == 0


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 (or 'dir'/'link') of everything under ``folder``, hidden files included."""
    state = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            state[key] = "link:" + os.readlink(path)
        elif path.is_dir():
            state[key] = "dir"
        else:
            try:
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            except PermissionError:  # the no-permission case: its mode is the state
                state[key] = f"mode:{path.stat().st_mode:o}"
    return state


def sidecars(output: Path) -> set[Path]:
    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    return {output, output.with_name(stem + ".report.json"), output.with_name(stem + ".plan.json")}


def check_result(input_path: Path, output: Path) -> None:
    """The output is a valid model that runs, and its DW weights are exactly the input's under the masks.

    Plugin-format outputs are lowered first (lower() is the op's exact standard-ONNX form) so ONNX Runtime can
    run them and their DW weights can be read back per node."""
    onnx.checker.check_model(str(output), full_check=True)
    pruned, original = lower(onnx.load(str(output))), onnx.load(str(input_path))
    session = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = random_feeds(original, dynamic=10)
    got = session.run(None, feeds)
    node_names = [n.name for n in original.graph.node if n.name]
    if len(node_names) == len(set(node_names)):
        reference = ort.InferenceSession(str(input_path), providers=["CPUExecutionProvider"])
    else:  # ONNX Runtime refuses duplicate node names, which the tool repairs: run a copy renamed here
        renamed = onnx.ModelProto()
        renamed.CopyFrom(original)
        for number, node in enumerate(renamed.graph.node):
            node.name = f"node_{number}"
        reference = ort.InferenceSession(renamed.SerializeToString(), providers=["CPUExecutionProvider"])
    want = reference.run(None, feeds)
    assert [o.name for o in session.get_outputs()] == [o.name for o in reference.get_outputs()]
    assert [g.shape for g in got] == [w.shape for w in want]
    assert [g.dtype for g in got] == [w.dtype for w in want]
    plan_file = next(p for p in sidecars(output) if p.name.endswith(".plan.json"))
    plan = PruningPlan.from_dict(json.loads(plan_file.read_text()))
    before, after = GraphIndex(original.graph), GraphIndex(pruned.graph)
    names_before = {n.name: n for n in original.graph.node}
    names_after = {n.name: n for n in pruned.graph.node}
    for layer in plan.dw_layers:
        keep = layer.keep_mask()
        if layer.name in names_before:  # nodes renamed by the tool (duplicate/empty names) are checked by shape
            weight = _weight_value(original, before, names_before[layer.name].input[1], feeds)
            written = after.constant(names_after[layer.name].input[1])
            if written.ndim == 4 and keep.ndim == 3:  # a 1-D DW conv runs as the op's 1xk case: [C, 1, 1, k]
                written = written.reshape(keep.shape)
            np.testing.assert_array_equal(written, np.where(keep, weight, 0).astype(weight.dtype))
        else:
            assert after.constant(names_after[layer.name].input[1]).shape == keep.shape


def _weight_value(model: onnx.ModelProto, index: GraphIndex, name: str, feeds: dict[str, np.ndarray]
                  ) -> np.ndarray:
    """The input's value of a weight tensor: its constant, or (an IR 3 input, a Reshape(Transpose) chain the
    tool folds) what ONNX Runtime computes for it as an extra graph output."""
    value = index.constant(name)
    if value is not None:
        return value
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], feeds)[0]


def assert_outcome(case: Case, args: list[str], exit_code: int, stderr: str, before: dict[str, str],
                   folder: Path, outside: dict[str, str]) -> None:
    assert "Traceback" not in stderr, (case.name, stderr)
    after = snapshot(folder)
    if case.expect == OK:
        assert exit_code == 0, (case.name, stderr)
        output = Path(args[1])
        created = {str(p.relative_to(folder)) for p in sidecars(output)}
        assert set(after) - set(before) == created, case.name
        assert {k: after[k] for k in before} == before, f"{case.name}: an input changed"
        check_result(Path(args[0]), output)
    else:
        lines = stderr.strip().splitlines()
        assert exit_code == 2, (case.name, exit_code, stderr)
        assert len(lines) == 1 and lines[0].startswith("deprune-onnx: error: "), (case.name, stderr)
        assert case.expect in lines[0], (case.name, lines[0])
        assert after == before, f"{case.name}: files changed or left behind: {set(after) ^ set(before)}"
    assert {p: digest(Path(p)) for p in outside} == outside, f"{case.name}: an input outside changed"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outside_inputs(args: list[str], folder: Path) -> dict[str, str]:
    return {a: digest(Path(a)) for a in args
            if Path(a).is_file() and folder not in Path(a).resolve().parents and not a.startswith("/dev")}


@pytest.mark.parametrize("case", [c for c in CASES if not c.unprivileged], ids=lambda c: c.name)
def test_case_through_the_cli(case: Case, tmp_path: Path) -> None:
    folder = tmp_path / "case"
    folder.mkdir()
    args = case.build(folder)
    before, outside = snapshot(folder), outside_inputs(args, folder)
    result = CliRunner().invoke(main, ["prune", *args, "-q"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stdout == "", (case.name, result.stdout)
    assert_outcome(case, args, result.exit_code, result.stderr, before, folder, outside)


def _drop_file_capabilities() -> None:
    """Remove CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set before exec: the child stays
    root (it can still run the interpreter under /root) but file permission bits now apply to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.mark.parametrize("case", [c for c in CASES if c.unprivileged], ids=lambda c: c.name)
def test_permission_case_as_an_unprivileged_process(case: Case, tmp_path: Path) -> None:
    """chmod does not stop root, so as root the CLI runs in a subprocess without the capabilities that let
    root ignore file permissions (where the container refuses that, the case is skipped with the reason)."""
    folder = tmp_path / "case"
    folder.mkdir()
    args = case.build(folder)
    before = snapshot(folder)
    try:
        proc = subprocess.run([sys.executable, "-m", "deprune_onnx.cli.main", "prune", *args, "-q"],
                              capture_output=True, text=True, timeout=120,
                              preexec_fn=_drop_file_capabilities if IS_ROOT else None)
    except subprocess.TimeoutExpired:
        raise  # a hang is a failure, never a missing capability
    except subprocess.SubprocessError as exc:
        if not IS_ROOT:
            raise
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE here ({exc}); "
                    "chmod would not stop root, so this case cannot be observed")
    try:
        assert_outcome(case, args, proc.returncode, proc.stderr, before, folder, {})
    finally:  # let pytest clean the folder up
        for path in [folder, *folder.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755)


SUBPROCESS_CASES = ("truncated protobuf (real model)", "graph cycle", "dynamic batch and spatial dims",
                    "output == input", "--dw-ratio 0.5.1", "external data")


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_case_as_a_real_process(name: str, tmp_path: Path) -> None:
    """The console entry point as a separate process: exit code, stderr and files as seen by a shell script."""
    case = next(c for c in CASES if c.name == name)
    folder = tmp_path / "case"
    folder.mkdir()
    args = case.build(folder)
    before, outside = snapshot(folder), outside_inputs(args, folder)
    proc = subprocess.run([sys.executable, "-m", "deprune_onnx.cli.main", "prune", *args, "-q"],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout == ""
    assert_outcome(case, args, proc.returncode, proc.stderr, before, folder, outside)


def test_corpus_is_big_enough_and_names_are_unique() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    assert SAMPLE_MODEL.is_file()


def test_qdq_weights_stay_quantized(tmp_path: Path) -> None:
    """An int8 QDQ model is pruned in its integer form: the DW weight stays int8 behind its DequantizeLinear."""
    case = next(c for c in CASES if c.name == "int8 QDQ weights")
    args = case.build(tmp_path)
    assert CliRunner().invoke(main, ["prune", *args, "-q", "--dw-ratio", "0.5"]).exit_code == 0
    before, after = onnx.load(args[0]), onnx.load(args[1])
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in before.graph.node]
    dw = next(n for n in after.graph.node if n.op_type == "Conv" and n.name.startswith("blocks.0.dw"))
    quantized = GraphIndex(after.graph).producer[dw.input[1]].input[0]
    weight = next(t for t in after.graph.initializer if t.name == quantized)
    assert weight.data_type == onnx.TensorProto.INT8
    plan = PruningPlan.from_dict(json.loads((tmp_path / "out.plan.json").read_text()))
    keep = next(layer for layer in plan.dw_layers if layer.name == dw.name).keep_mask()
    values = onnx.numpy_helper.to_array(weight)
    assert 0.4 <= 1 - keep.mean() <= 0.6 and np.all(values[~keep] == 0)
