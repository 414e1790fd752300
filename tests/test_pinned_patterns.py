"""The DW decisions of the three sample models are pinned: per layer the HSR pattern (u/o), K per sub-GEMM, the
balance step's moves and the keep mask's SHA-256, for dcp / b / bh at 0.5 and 0.78 (and MobileNetV3-Small bh at 0.7,
where the balance step's tie-break shows).

Counts, alignment and u/o totals can all stay right while a different layer or weight is chosen (a changed
tie-break between equal-beta layers did exactly that, issue #17), so this pins WHICH ones. The expected file and
how it was made: tests/data/pinned_dw/ (record.py; re-recorded only on purpose, with the reason in its note).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import pytest

from support.samples import sample_model

PINNED = Path(__file__).resolve().parent / "data" / "pinned_dw"
CASES = json.loads((PINNED / "dw_decisions.json").read_text(encoding="utf-8"))["cases"]
_spec = importlib.util.spec_from_file_location("pinned_dw_record", PINNED / "record.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)

_models: dict[str, onnx.ModelProto] = {}


def _model(key: str) -> onnx.ModelProto:
    if key not in _models:
        _models[key] = onnx.load(str(sample_model(key)))
    return _models[key]


def test_the_pinned_file_covers_every_model_method_and_ratio() -> None:
    expected = [f"{k}/{m}/{r}" for k in ("mobilenet_v2", "mobilenet_v3_small", "pplcnet")
                for m in ("dcp", "b", "bh") for r in (0.5, 0.78)] + ["mobilenet_v3_small/bh/0.7"]
    assert sorted(CASES) == sorted(expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_dw_decisions_match_the_pinned_ones(case: str) -> None:
    key, method, ratio = case.split("/")
    got = record.decisions(_model(key), method, float(ratio))
    expected = CASES[case]
    assert [layer["name"] for layer in got] == [layer["name"] for layer in expected]
    for mine, pinned in zip(got, expected):
        assert mine == pinned, f"{case}: layer {pinned['name']} differs"
