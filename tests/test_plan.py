"""The PruningPlan holds decisions only (format version 2), is never changed after planning, and version-1 files
still read (their records dropped, their options turned into settings). Byte-identical re-application of every
recorded version-1 plan is tests/test_golden.py."""
from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest

from deprune_onnx.errors import DepruneError
from deprune_onnx.options import DWOptions, PWOptions
from deprune_onnx.plan import PLAN_FORMAT_VERSION, PlanSettings, PruningPlan, load_plan

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_v1"


def _version1(name: str) -> dict:
    return json.loads(gzip.decompress((GOLDEN / f"{name}.plan.json.gz").read_bytes()))


def test_version1_allocate_plan_reads_as_decisions_only() -> None:
    data = _version1("mobilenet_v2__bh-0.5-allocate-plugin")
    assert data["format_version"] == 1 and data["allocation"] and data["dw_layers"][0]["sensitivity"]
    plan = PruningPlan.from_dict(data)
    assert plan.format_version == PLAN_FORMAT_VERSION == 2
    assert [layer.mask for layer in plan.dw_layers] == [layer["mask"] for layer in data["dw_layers"]]
    assert [layer.target_ratio for layer in plan.dw_layers] == [layer["target_ratio"] for layer in data["dw_layers"]]
    assert plan.settings.dw.method == "bh" and plan.settings.dw.dw_ratio == 0.5 and not plan.settings.keep_zeros
    written = plan.to_dict()
    assert written["format_version"] == 2 and set(written) == {
        "method", "dw_ratio", "tile", "subgemm_channels", "dw_layers", "pw", "settings", "format_version"}
    assert not {"calibration", "sensitivity"} & set(written["dw_layers"][0])
    assert PruningPlan.from_dict(json.loads(json.dumps(written))) == plan  # version 2 round trip


def test_version1_pw_options_are_reapplied_from_settings() -> None:
    nm24 = PruningPlan.from_dict(_version1("mobilenet_v2__b-0.5-nm24-plugin"))
    assert nm24.pw is None and nm24.settings.pw == PWOptions(method="nm24")
    groups = PruningPlan.from_dict(_version1("mobilenet_v2__bh-0.5-pw0.5-align8-plugin"))
    assert groups.pw is not None and groups.pw.groups and groups.settings.pw == PWOptions(ratio=0.5, align=8)


def test_plan_is_frozen() -> None:
    plan = PruningPlan.from_dict(_version1("mobilenet_v2__dcp-0.5-plugin"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.dw_ratio = 0.9  # type: ignore[misc]
    assert isinstance(plan.dw_layers, tuple)


def test_with_masks_builds_a_new_plan() -> None:
    plan = PruningPlan.from_dict(_version1("mobilenet_v2__b-0.5-dense"))
    first = plan.dw_layers[0]
    keep = first.keep_mask().copy()
    keep[0] = True  # restore the first channel's taps
    new = plan.with_masks({first.name: keep})
    assert new is not plan and plan.dw_layers[0] is first and plan.dw_layers[0].mask == first.mask
    assert (new.dw_layers[0].keep_mask() == keep).all()
    assert new.dw_layers[0].kept_per_subgemm[0] > first.kept_per_subgemm[0]
    assert new.dw_layers[1:] == plan.dw_layers[1:]


@pytest.mark.parametrize("version", [0, 3, None])
def test_unknown_versions_are_one_line_errors(tmp_path: Path, version) -> None:
    data = _version1("mobilenet_v2__dcp-0.5-plugin")
    data["format_version"] = version
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DepruneError, match=r"not a valid pruning plan .*format_version"):
        load_plan(path)


def test_unknown_fields_are_refused(tmp_path: Path) -> None:
    data = PruningPlan.from_dict(_version1("mobilenet_v2__dcp-0.5-plugin")).to_dict()
    data["calibration"] = {"samples": 3}  # a record does not belong in a version-2 plan
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DepruneError, match="unknown plan field"):
        load_plan(path)


def test_version1_dw_options_become_the_settings() -> None:
    plan = PruningPlan.from_dict(_version1("mobilenet_v2__dcp-0.5-plugin"))  # DWOptions' default method is bh
    assert plan.settings.dw.method == "dcp" and plan.settings.dw.tile == 32 and not plan.settings.keep_zeros
    calib = PruningPlan.from_dict(_version1("mobilenet_v2__b-0.3-calib-dense"))
    assert calib.settings.dw.method == "b" and calib.settings.dw.dw_ratio == 0.3
    allocate = PruningPlan.from_dict(_version1("mobilenet_v2__bh-0.5-allocate-plugin"))
    ratios = allocate.settings.dw.layer_ratios
    assert len(ratios) == 17 and ratios[0] == ("/features/features.1/conv/conv.0/conv.0.0/Conv", 0.111111)


def _version1_keep_zeros(**dw: object) -> dict:
    """A version-1 --keep-zeros plan as that version wrote it (pipeline.make_keep_zeros_plan before commit
    02c3697): options hold the findings and only method and tile of the DW options, no pw; dw_ratio is the zero
    ratio the input had."""
    return {"format_version": 1, "method": "dcp", "dw_ratio": 0.123457, "tile": 16, "subgemm_channels": 32,
            "dw_layers": [], "pw": None,
            "options": {"keep_zeros": {"violations": {}, "layers_with_violations": []},
                        "dw": {"method": "dcp", "tile": 16, **dw}}}


def test_version1_keep_zeros_plan_reads_the_zero_ratio_into_the_settings() -> None:
    plan = PruningPlan.from_dict(_version1_keep_zeros())
    assert plan.settings.keep_zeros is True
    assert plan.settings.dw == DWOptions(method="dcp", dw_ratio=0.123457, tile=16)
    assert plan.settings.pw == PWOptions()
    assert plan.to_dict()["settings"]["keep_zeros"] is True
    # a ratio the version-1 options did name is kept, not replaced by the zero ratio
    assert PruningPlan.from_dict(_version1_keep_zeros(dw_ratio=0.5)).settings.dw.dw_ratio == 0.5


def test_version1_plan_without_options_or_layers_reads_with_default_settings() -> None:
    data = {"format_version": 1, "method": "b", "dw_ratio": 0.5, "tile": 32, "subgemm_channels": 32}
    plan = PruningPlan.from_dict(data)
    assert plan.dw_layers == () and plan.pw is None and plan.settings == PlanSettings()
    assert data == {"format_version": 1, "method": "b", "dw_ratio": 0.5, "tile": 32, "subgemm_channels": 32}
