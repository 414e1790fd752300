"""No behaviour change across refactors: a fixed matrix of sample models x prune options must write the same
model bytes as recorded on the commit named in tests/data/golden_v1/matrix.json (issue #11), and the version-1
plans recorded there must re-apply (``--plan``) to the same bytes.

The matrix and the recorder: tests/data/golden_v1/record.py. A deliberate change of outputs re-records them
(the commit message says why).
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from support.cli_testing import run_cli
from support.samples import SAMPLES_DIR, foolbox_data_dir

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_v1"
CASES = json.loads((GOLDEN / "matrix.json").read_text())["cases"]
# Options that decide masks: with --plan they are ignored or refused, so a plan re-application drops them.
PLANNING_OPTIONS = {"--method", "--dw-ratio", "--allocate", "--pw-ratio", "--pw-align", "--pw-scope"}

pytestmark = pytest.mark.model


def _args(case: dict) -> list[str]:
    return [arg.format(images=foolbox_data_dir()) for arg in case["args"]]


def _without_planning_options(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in PLANNING_OPTIONS:
            skip = True
        else:
            kept.append(arg)
    return kept


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(CASES))
def test_prune_writes_the_recorded_bytes(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    out = tmp_path / "out.onnx"
    result = run_cli("prune", SAMPLES_DIR / case["model"], out, "-q", *_args(case))
    assert result.exit_code == 0, result.output
    assert _sha256(out) == case["onnx_sha256"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_version1_plan_reapplies_to_the_recorded_bytes(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    plan = tmp_path / "v1.plan.json"
    plan.write_bytes(gzip.decompress((GOLDEN / f"{name}.plan.json.gz").read_bytes()))
    assert json.loads(plan.read_text()).get("version", 1) == 1
    out = tmp_path / "out.onnx"
    result = run_cli("prune", SAMPLES_DIR / case["model"], out, "-q", "--plan", plan,
                     *_without_planning_options(_args(case)))
    assert result.exit_code == 0, result.output
    # a case whose planning changed deliberately keeps the bytes its version-1 plan was recorded with
    assert _sha256(out) == case.get("plan_onnx_sha256", case["onnx_sha256"])
