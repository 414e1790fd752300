"""``export-masks`` and ``prune --keep-zeros``: masks as data, zero patterns back to plans, structural checks."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from support.cli_testing import run_cli
from support.builders import dsconv_model
from support.samples import sample_model
from deprune_onnx.analysis import analyze
from deprune_onnx.dw.keep_zeros import check_dw_structure, plan_keep_zeros
from deprune_onnx.dw.masks import bwt_mask, dcp_mask
from deprune_onnx.report.masks_export import pytorch_parameter_name
from deprune_onnx.plan import load_plan
from support.op_testing import run_ort


def scale_kept_weights(model: onnx.ModelProto, masks: dict[str, np.ndarray], seed: int = 0) -> None:
    """What fine-tuning with fixed masks does to a model: kept weights change, pruned ones stay exactly zero."""
    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        if tensor.name in masks:
            weight = numpy_helper.to_array(tensor)
            tuned = weight * rng.uniform(0.5, 1.5, weight.shape).astype(weight.dtype) * masks[tensor.name]
            tensor.CopyFrom(numpy_helper.from_array(tuned.astype(weight.dtype), tensor.name))


@pytest.mark.parametrize(("node", "initializer", "expected"), [
    ("/features/features.1/conv/conv.0/conv.0.0/Conv", "onnx::Conv_541", "features.1.conv.0.0.weight"),
    ("/features/features.0/features.0.0/Conv", "onnx::Conv_538", "features.0.0.weight"),
    ("/blocks/blocks.2/blocks.2.0/conv_dw/Conv", "onnx::Conv_9", "blocks.2.0.conv_dw.weight"),
    ("/layer1/layer1.0/conv1/Conv", "onnx::Conv_3", "layer1.0.conv1.weight"),
    ("node_conv2d_4", "features.3.conv.1.0.weight", "features.3.conv.1.0.weight"),
    ("Conv@2", "_v_578", None),
    ("Conv.3", "_v_289", None),
    ("/Conv", "onnx::Conv_1", None),
])
def test_pytorch_parameter_name_rule(node: str, initializer: str, expected: str | None) -> None:
    assert pytorch_parameter_name(node, initializer) == expected


def test_export_masks_keys_match_the_pytorch_state_dict_names(tmp_path: Path) -> None:
    source = sample_model("mobilenet_v2")
    out = tmp_path / "pruned.onnx"
    assert run_cli("prune", source, out, "--dw-ratio", "0.6", "--format", "dense", "-q").exit_code == 0
    result = run_cli("export-masks", tmp_path / "pruned.plan.json", tmp_path / "masks.npz")
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "pruned.plan.json")
    with np.load(tmp_path / "masks.npz") as masks:
        assert str(masks["__shapes__"]) == "original"  # no PW removal: the model's own shapes
        keys = set(masks.files) - {"__shapes__"}
        for layer in plan.dw_layers:
            assert np.array_equal(masks[layer.weight], layer.keep_mask())
            torch_name = pytorch_parameter_name(layer.name, layer.weight)
            assert np.array_equal(masks[torch_name], layer.keep_mask())
    # torchvision's MobileNetV2: the 17 DW convs are features.1.conv.0.0 and features.N.conv.1.0 (N = 2..17)
    expected = {"features.1.conv.0.0.weight"} | {f"features.{n}.conv.1.0.weight" for n in range(2, 18)}
    assert {k for k in keys if k.endswith(".weight")} == expected
    assert len(keys) == 2 * len(plan.dw_layers)


def test_export_masks_then_keep_zeros_reproduces_the_plan(tmp_path: Path) -> None:
    """Prune -> export masks -> 'fine-tune' (kept weights rescaled, zeros kept) -> --keep-zeros: same masks."""
    source = sample_model("mobilenet_v3_small")
    pruned = tmp_path / "pruned.onnx"
    assert run_cli("prune", source, pruned, "--method", "bh", "--dw-ratio", "0.7", "--format", "dense",
                   "-q").exit_code == 0
    assert run_cli("export-masks", tmp_path / "pruned.plan.json", tmp_path / "masks.npz", "-q").exit_code == 0
    model = onnx.load(str(pruned))
    with np.load(tmp_path / "masks.npz") as masks:
        scale_kept_weights(model, {key: masks[key] for key in masks.files})
    tuned = tmp_path / "tuned.onnx"
    onnx.save(model, str(tuned))

    again = tmp_path / "again.onnx"
    result = run_cli("prune", tuned, again, "--keep-zeros", "--method", "bh", "--format", "dense")
    assert result.exit_code == 0, result.output
    assert "--keep-zeros:" not in result.output  # no structural violation to report
    summary = next(line for line in result.output.splitlines() if line.startswith("DW: "))
    # The pattern a user sees says why it has no u/o, and the target is the found ratio, rounded like PR.
    assert re.search(r"PR (0\.\d{4}) \(target \1\)", summary), summary
    assert "DW-Pat. 0u0o (every layer tile-aligned)" in summary, summary
    original, reproduced = load_plan(tmp_path / "pruned.plan.json"), load_plan(tmp_path / "again.plan.json")
    assert [p.name for p in reproduced.dw_layers] == [p.name for p in original.dw_layers]
    for before, after in zip(original.dw_layers, reproduced.dw_layers):
        assert np.array_equal(before.keep_mask(), after.keep_mask()), before.name
        assert before.kept_per_subgemm == after.kept_per_subgemm
        assert after.pattern in ("aligned", "-") if after.method != "none" else True
    # the weights are the fine-tuned ones, untouched
    tuned_weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for tensor in onnx.load(str(again)).graph.initializer:
        assert np.array_equal(numpy_helper.to_array(tensor), tuned_weights[tensor.name])


def test_check_dw_structure_rules() -> None:
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((80, 1, 3, 3)).astype(np.float32)  # sub-GEMMs of 32, 32, 16 channels
    balanced = bwt_mask(weight, 0.6)
    assert check_dw_structure(balanced, "b", 32) == []
    assert check_dw_structure(balanced, "dcp", 32) == []
    unbalanced = dcp_mask(weight, 0.6)
    assert any(line.startswith("BWT:") for line in check_dw_structure(unbalanced, "b", 32))
    # bh: BWT K = 288 - round(0.6 * 288) = 115 per full sub-GEMM: not a multiple of 32
    lines = check_dw_structure(balanced, "bh", 32)
    assert len(lines) == 1 and lines[0].startswith("HSR: 3 sub-GEMM(s)")
    # keep exactly 96 vectors in each full sub-GEMM and 32 in the partial one: aligned and balanced
    aligned = np.zeros_like(balanced)
    flat = aligned.reshape(80, -1)
    for start, stop, k in ((0, 32, 96), (32, 64, 96), (64, 80, 32)):
        block = np.zeros((stop - start) * 9, dtype=bool)
        block[rng.permutation(block.size)[:k]] = True
        flat[start:stop] = block.reshape(stop - start, 9)
    assert check_dw_structure(aligned, "bh", 32) == []


def test_keep_zeros_single_misaligned_layer_is_under_aligned_exactly(tmp_path: Path) -> None:
    """One misaligned layer -> HSR under-aligns it (floor(1/2) = 0 over); restored taps are zero-valued, so the
    output model computes exactly what the input computes, and the plan's K_g are tile-aligned."""
    model = dsconv_model(channels=40, expand=2)  # DW with 80 channels: sub-GEMMs of 32, 32, 16
    weights = {t.name: t for t in model.graph.initializer}
    w = numpy_helper.to_array(weights["w_dw"])
    w = w * dcp_mask(w, 0.55)
    weights["w_dw"].CopyFrom(numpy_helper.from_array(w, "w_dw"))
    found = plan_keep_zeros(model, analyze(model), "bh", 32)
    (layer,) = found.dw_layers
    assert found.violations["dw"][0].startswith("HSR:")
    assert layer.pattern == "u"
    assert all(k % 32 == 0 or k == v for k, v in zip(layer.kept_per_subgemm, layer.vectors_per_subgemm))
    assert np.array_equal(layer.keep_mask() | (w != 0), layer.keep_mask())  # only taps were added

    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(source))
    result = run_cli("prune", source, out, "--keep-zeros", "--format", "dense", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["keep_zeros"]["layers_with_violations"] == ["dw"]
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 40, 12, 12)).astype(np.float32)}
    before, after = run_ort(source, feeds)[0], run_ort(out, feeds)[0]
    np.testing.assert_array_equal(before, after)


def test_keep_zeros_over_aligned_layers_drop_their_smallest_kept_weights() -> None:
    model = onnx.load(str(sample_model("mobilenet_v3_small")))
    analysis = analyze(model)
    originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for tensor in model.graph.initializer:
        if tensor.name in {layer.weight for layer in analysis.dw_layers}:
            w = originals[tensor.name]
            tensor.CopyFrom(numpy_helper.from_array(w * dcp_mask(w, 0.6), tensor.name))
    found = plan_keep_zeros(model, analyze(model), "bh", 32)
    patterns = [layer.pattern for layer in found.dw_layers]
    assert "o" in patterns and "u" in patterns
    for layer in found.dw_layers:
        nonzero = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == layer.weight)) != 0
        keep = layer.keep_mask()
        assert check_dw_structure(keep, "bh", 32) == [] or layer.name in found.violations
        assert all(k % 32 == 0 or k == v for k, v in zip(layer.kept_per_subgemm, layer.vectors_per_subgemm))
        if layer.pattern == "o":
            assert np.array_equal(keep & nonzero, keep) and keep.sum() < nonzero.sum()
        elif layer.pattern == "u":
            assert np.array_equal(keep | nonzero, keep) and keep.sum() > nonzero.sum()
        else:
            assert np.array_equal(keep, nonzero)


def test_keep_zeros_refuses_plan_together(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(dsconv_model(), str(source))
    result = run_cli("prune", source, tmp_path / "o.onnx", "--keep-zeros", "--plan", tmp_path / "p.json")
    assert result.exit_code == 2
    assert "choose one source of masks" in result.output


def test_export_masks_bad_plan_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text("{}")
    result = run_cli("export-masks", bad, tmp_path / "m.npz")
    assert result.exit_code == 2
    assert not (tmp_path / "m.npz").exists()
