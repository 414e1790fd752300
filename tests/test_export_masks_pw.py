"""export-masks after PW channel removal (issue #12.8): masks in the original model's shapes, the removed channel
indices per tensor, ``__shapes__`` saying which shapes; and docs/finetune.md's path 2 round trip works.

The model: DSConv blocks without expansion PW, so each DW conv reads the previous block's projection output and
loses channels when --pw-ratio removes that projection's filters (the case of the issue: a [32,1,3,3] mask for a
[48,1,3,3] weight).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from support.cli_testing import assert_one_line_error, run_cli
from support.dsconv_graphs import BlockSpec, dsconv_network
from support.op_testing import random_feeds, run_ort

PRUNE = ["--format", "dense", "--method", "b", "--dw-ratio", "0.5", "--pw-ratio", "0.5", "--pw-align", "8", "-q"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pw_masks")
    model = dsconv_network([BlockSpec(16, 48, expand=1), BlockSpec(48, 48, expand=1),
                            BlockSpec(48, 64, expand=1, stride=2), BlockSpec(64, 24, expand=1)], size=12, seed=3)
    original = folder / "original.onnx"
    onnx.save(model, original)
    result = run_cli("prune", original, folder / "pruned.onnx", *PRUNE)
    assert result.exit_code == 0, result.output
    return {"original": original, "pruned": folder / "pruned.onnx", "plan": folder / "pruned.plan.json",
            "folder": folder}


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def _masked_original(original: Path, masks: np.lib.npyio.NpzFile, output: Path) -> Path:
    """The original model with every masked weight zeroed: what fine-tuning with the masks fixed leaves."""
    model = onnx.load(original)
    for tensor in model.graph.initializer:
        if tensor.name in masks.files:
            value = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(np.where(masks[tensor.name], value, 0).astype(value.dtype),
                                                    tensor.name))
    onnx.save(model, output)
    return output


def test_reduced_masks_are_never_exported_under_original_names_silently(pruned: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    assert_one_line_error(run_cli("export-masks", pruned["plan"], tmp_path / "m.npz"), "--model ORIGINAL.onnx")
    assert not (tmp_path / "m.npz").exists()
    result = run_cli("export-masks", pruned["plan"], tmp_path / "m.npz", "--shapes", "reduced")
    assert result.exit_code == 0 and "reduced model's shapes" in result.output
    reduced = _initializers(pruned["pruned"])
    with np.load(tmp_path / "m.npz") as masks:
        assert str(masks["__shapes__"]) == "reduced"
        named = [key for key in masks.files if key in reduced]
        assert named and all(masks[key].shape == reduced[key].shape for key in named)


def test_masks_in_original_shapes_with_the_removed_indices(pruned: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("export-masks", pruned["plan"], tmp_path / "m.npz", "--model", pruned["original"])
    assert result.exit_code == 0, result.output
    original = _initializers(pruned["original"])
    plan = json.loads(pruned["plan"].read_text())
    groups = [group for group in plan["pw"]["groups"] if group["removed"]]
    assert groups
    nodes = {node.name: node for node in onnx.load(pruned["original"]).graph.node}
    with np.load(tmp_path / "m.npz") as masks:
        assert str(masks["__shapes__"]) == "original"
        onnx_keys = [key for key in masks.files if key in original]
        assert all(masks[key].shape == original[key].shape for key in onnx_keys)
        # Every DW layer's weight, in the original shape, and at least one of them lost channels.
        dw_weights = {nodes[layer["name"]].input[1] for layer in plan["dw_layers"]}
        assert dw_weights <= set(onnx_keys)
        assert any(masks[name].shape[0] > layer["shape"][0]
                   for layer in plan["dw_layers"] for name in [nodes[layer["name"]].input[1]])
        # The projection filters each group removed, by index, on axis 0 of each producer's weight.
        for group in groups:
            for producer in group["producers"]:
                weight = nodes[producer].input[1]
                assert masks[f"pw_removed/axis0/{weight}"].tolist() == group["removed"]
                assert not masks[weight][group["removed"]].any() and masks[weight].shape == original[weight].shape
            for reader in group["readers"]:
                weight = nodes[reader].input[1]
                axis = 0 if nodes[reader].op_type == "Conv" and masks[weight].shape[1] == 1 else 1
                assert masks[f"pw_removed/axis{axis}/{weight}"].tolist() == group["removed"]


def test_finetune_path_two_round_trip(pruned: dict[str, Path], tmp_path: Path) -> None:
    """Zeroing the original model at the masks computes what the pruned model computes, and prune --keep-zeros
    with the same PW options turns it back into the pruned model (docs/finetune.md, path 2)."""
    assert run_cli("export-masks", pruned["plan"], tmp_path / "m.npz", "--model", pruned["original"]).exit_code == 0
    with np.load(tmp_path / "m.npz") as masks:
        tuned = _masked_original(pruned["original"], masks, tmp_path / "tuned.onnx")
    feeds = random_feeds(onnx.load(pruned["original"]), seed=1)
    expected = run_ort(pruned["pruned"], feeds)[0]
    np.testing.assert_allclose(run_ort(tuned, feeds)[0], expected, rtol=1e-5, atol=1e-5)
    result = run_cli("prune", tuned, tmp_path / "again.onnx", "--keep-zeros", *PRUNE)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(run_ort(tmp_path / "again.onnx", feeds)[0], expected, rtol=1e-5, atol=1e-5)
    again = json.loads((tmp_path / "again.plan.json").read_text())
    first = json.loads(pruned["plan"].read_text())
    assert [g["removed"] for g in again["pw"]["groups"]] == [g["removed"] for g in first["pw"]["groups"]]
    assert [layer["mask"] for layer in again["dw_layers"]] == [layer["mask"] for layer in first["dw_layers"]]


def test_a_plan_without_pw_removal_needs_no_model(tmp_path: Path) -> None:
    model = dsconv_network([BlockSpec(16, 48, expand=1), BlockSpec(48, 24, expand=1)], size=8)
    onnx.save(model, tmp_path / "m.onnx")
    assert run_cli("prune", tmp_path / "m.onnx", tmp_path / "p.onnx", "--format", "dense", "-q").exit_code == 0
    result = run_cli("export-masks", tmp_path / "p.plan.json", tmp_path / "k.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "k.npz") as masks:
        assert str(masks["__shapes__"]) == "original" and not any(k.startswith("pw_removed") for k in masks.files)
