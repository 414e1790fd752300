"""The plan's mask codec and file reader, against bytes written out by hand (not only encode -> decode).

Masks travel as base64 of np.packbits (row-major, 1 = kept, the last byte padded with zero bits), so the
expected strings below are computed by hand from the bit patterns.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import deprune_onnx
from deprune_onnx.errors import DepruneError
from deprune_onnx.options import DWOptions, PWOptions
from deprune_onnx.plan import (PLAN_FORMAT_VERSION, DWLayerPlan, PlanSettings, PruningPlan, decode_mask, encode_mask,
                               load_plan)


def test_encode_mask_writes_the_hand_computed_bits() -> None:
    keep = np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=bool)          # 10110000 1(0000000)
    assert encode_mask(keep) == base64.b64encode(bytes([0xB0, 0x80])).decode() == "sIA="
    assert encode_mask(keep.reshape(3, 1, 1, 3).astype(np.int64)) == "sIA="   # any shape, any truthy dtype
    assert encode_mask(np.ones((2, 1, 2, 2), dtype=bool)) == "/w=="              # 11111111
    assert encode_mask(np.zeros(0, dtype=bool)) == ""


def test_decode_mask_reads_the_hand_computed_bits_in_row_major_order() -> None:
    keep = decode_mask("sIA=", (3, 1, 1, 3))
    assert keep.dtype == bool and keep.shape == (3, 1, 1, 3)
    assert keep.reshape(-1).tolist() == [True, False, True, True, False, False, False, False, True]
    assert decode_mask("sIA=", (16,)).tolist()[8:] == [True] + [False] * 7


@pytest.mark.parametrize("shape", [(17,), (8,), (2, 4)])
def test_decode_mask_rejects_a_bit_count_that_does_not_fit(shape) -> None:
    with pytest.raises(ValueError, match="expected"):
        decode_mask("sIA=", shape)  # 16 bits hold 9..16 weights, no fewer, no more


def test_decode_mask_rejects_non_base64() -> None:
    with pytest.raises(ValueError):
        decode_mask("s!A=", (9,))


def layer(name: str, pattern: str, keep: np.ndarray) -> DWLayerPlan:
    return DWLayerPlan(name=name, weight=f"{name}.w", shape=list(keep.shape), method="bh", target_ratio=0.5,
                       mask=encode_mask(keep), kept_per_subgemm=[int(keep.sum())],
                       vectors_per_subgemm=[keep.size], pattern=pattern)


def sample_plan() -> PruningPlan:
    keep = np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=bool).reshape(1, 1, 3, 3)
    layers = [layer("a", "u", keep), layer("b", "o", keep), layer("c", "u", keep), layer("d", "aligned", keep)]
    return PruningPlan(method="bh", dw_ratio=0.5, tile=32, subgemm_channels=32, dw_layers=layers)


def test_plan_round_trips_through_json_and_counts_patterns() -> None:
    plan = sample_plan()
    assert plan.dw_pattern_string() == "2u1o"
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["format_version"] == PLAN_FORMAT_VERSION and data["dw_layers"][1]["mask"] == "sIA="
    back = PruningPlan.from_dict(data)
    assert back.to_dict() == plan.to_dict() and list(back.dw_layers) == list(plan.dw_layers)
    assert back.dw_layers[0].keep_mask().reshape(-1).tolist() == [1, 0, 1, 1, 0, 0, 0, 0, 1]


def test_load_plan_reads_a_written_plan(tmp_path: Path) -> None:
    path = tmp_path / "p.plan.json"
    path.write_text(json.dumps(sample_plan().to_dict()), encoding="utf-8")
    assert load_plan(path).to_dict() == sample_plan().to_dict()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=PLAN_FORMAT_VERSION + 1), "format_version"),
    (lambda d: d.pop("format_version"), "format_version"),
    (lambda d: d["dw_layers"][2].update(mask="sIA="[:2] + "=="), "mask holds 8 bits, expected 9"),
    (lambda d: d["dw_layers"][0].update(unknown=1), "TypeError"),
    (lambda d: d.pop("tile"), "tile"),
])
def test_load_plan_names_the_file_and_the_problem(tmp_path: Path, edit, message: str) -> None:
    data = sample_plan().to_dict()
    edit(data)
    path = tmp_path / "bad.plan.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DepruneError, match="bad.plan.json: not a valid pruning plan") as info:
        load_plan(path)
    assert message in str(info.value)


def test_load_plan_file_problems_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DepruneError, match=r"missing.json: plan file not found$"):
        load_plan(tmp_path / "missing.json")
    with pytest.raises(DepruneError, match=r"is a directory, expected a plan JSON file$"):
        load_plan(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(DepruneError, match="broken.json: not a valid pruning plan"):
        load_plan(broken)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DepruneError, match="binary.json: cannot read plan"):
        load_plan(binary)


def test_decode_mask_refuses_a_stray_character_instead_of_skipping_it() -> None:
    # "sI!A=" without the "!" is the valid "sIA="; a lenient decoder would silently read the 9 bits
    with pytest.raises(ValueError):
        decode_mask("sI!A=", (9,))


def test_a_list_of_layers_given_by_a_caller_is_stored_as_a_tuple() -> None:
    plan = sample_plan()  # built with a list
    assert type(plan.dw_layers) is tuple and [layer.name for layer in plan.dw_layers] == ["a", "b", "c", "d"]


@pytest.mark.parametrize("patterns, expected", [
    (["u", "u", "u", "o", "-", "aligned"], "3u1o"),
    (["o", "o", "-"], "0u2o"),
    (["aligned", "-"], "0u0o"),
    (["u"], "1u0o"),
])
def test_dw_pattern_string_counts_under_then_over_aligned_layers(patterns: list[str], expected: str) -> None:
    keep = np.ones((1, 1, 1, 3), dtype=bool)
    plan = PruningPlan(method="bh", dw_ratio=0.5, tile=32, subgemm_channels=32,
                       dw_layers=[layer(f"l{i}", p, keep) for i, p in enumerate(patterns)])
    assert plan.dw_pattern_string() == expected


def test_a_minimal_version2_plan_reads_with_defaults() -> None:
    plan = PruningPlan.from_dict({"method": "dcp", "dw_ratio": 0.25, "tile": 16, "subgemm_channels": 32,
                                  "format_version": 2})
    assert (plan.method, plan.dw_ratio, plan.tile, plan.subgemm_channels) == ("dcp", 0.25, 16, 32)
    assert plan.dw_layers == () and plan.pw is None and plan.settings == PlanSettings()
    assert plan.format_version == 2


def test_settings_round_trip_through_json_field_by_field() -> None:
    settings = PlanSettings(
        dw=DWOptions(method="b", dw_ratio=0.3, layer_ratios=[("conv_a", 0.25), ("conv_*", 0.75)],
                     exclude=["stem*"], tile=16, hsr_alphas={"conv_a": 1.5}, hsr_rank="beta", target_speedup=1.4),
        pw=PWOptions(ratio=0.5, align=8, scope="all"), keep_zeros=True)
    plan = replace(sample_plan(), settings=settings)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["settings"]["dw"]["layer_ratios"] == [["conv_a", 0.25], ["conv_*", 0.75]]  # JSON has no tuples
    back = PruningPlan.from_dict(data).settings
    assert back.dw.layer_ratios == [("conv_a", 0.25), ("conv_*", 0.75)]
    assert back.dw == settings.dw and back.pw == settings.pw and back.keep_zeros is True
    assert back == settings


def test_settings_missing_from_the_file_are_the_defaults() -> None:
    assert PlanSettings.from_dict({}) == PlanSettings()
    assert PlanSettings.from_dict({"dw": None, "pw": None}) == PlanSettings()
    only_dw = PlanSettings.from_dict({"dw": {"method": "dcp"}})
    assert only_dw.dw == DWOptions(method="dcp") and only_dw.pw == PWOptions() and only_dw.keep_zeros is False


def test_error_messages_list_the_readable_versions_and_every_unknown_field() -> None:
    data = sample_plan().to_dict()
    with pytest.raises(ValueError, match=r"^unsupported plan format_version 7 \(this version reads 1, 2\)$"):
        PruningPlan.from_dict({**data, "format_version": 7})
    with pytest.raises(ValueError, match=r"^unknown plan field\(s\) allocation, calibration$"):
        PruningPlan.from_dict({**data, "calibration": {}, "allocation": []})


def test_load_plan_reads_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """Plans are written as UTF-8 and layer names may be non-ASCII: read under an ASCII locale (UTF-8 mode and
    locale coercion off), a plan with such a name still loads, instead of failing with the locale's codec."""
    data = sample_plan().to_dict()
    data["dw_layers"][0]["name"] = "stufe_ä/Conv"
    path = tmp_path / "p.plan.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert load_plan(path).dw_layers[0].name == "stufe_ä/Conv"  # this process's locale (UTF-8 here)
    package_root = Path(deprune_onnx.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C",
           "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(package_root)}
    code = ("import sys; from deprune_onnx.plan import load_plan; "
            "print(load_plan(sys.argv[1]).dw_layers[0].name)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stufe_ä/Conv"
