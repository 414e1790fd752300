"""Layer classification and DSConv block discovery on the real models and on generated graphs."""
from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

from support.builders import dsconv_model
from support.samples import sample_model
from deprune_onnx.analysis import analyze
from deprune_onnx.cli.main import main

# DW / PW / SE-1x1 conv counts as documented in samples/README.md (from the models' provenance notes).
EXPECTED_COUNTS = {"mobilenet_v2": (17, 34, 0), "mobilenet_v3_small": (11, 23, 18), "pplcnet": (13, 13, 5)}


@pytest.mark.parametrize("key", sorted(EXPECTED_COUNTS))
def test_real_models_have_the_documented_layer_counts(key: str) -> None:
    analysis = analyze(onnx.load(str(sample_model(key))))
    assert (len(analysis.dw_layers), len(analysis.pw_layers), len(analysis.se_convs)) == EXPECTED_COUNTS[key]
    assert not analysis.skipped
    for layer in analysis.dw_layers:
        assert layer.subgemms == -(-layer.out_channels // 32)
        assert layer.params == layer.out_channels * layer.kernel[0] * layer.kernel[1] + \
            (layer.out_channels if layer.bias else 0)
        out_h, out_w = layer.output_shape[2:]
        assert layer.macs == layer.out_channels * layer.kernel[0] * layer.kernel[1] * out_h * out_w


def test_mobilenet_v2_blocks_have_projection_and_ten_residual_adds() -> None:
    analysis = analyze(onnx.load(str(sample_model("mobilenet_v2"))))
    assert all(block.project_pw for block in analysis.blocks)
    assert sum(block.expand_pw is None for block in analysis.blocks) == 1  # the first block has no expansion
    assert sum(block.residual_add is not None for block in analysis.blocks) == 10


@pytest.mark.parametrize("key,se_blocks", [("mobilenet_v3_small", 9), ("pplcnet", 2)])
def test_se_blocks_are_found_between_dw_and_projection(key: str, se_blocks: int) -> None:
    analysis = analyze(onnx.load(str(sample_model(key))))
    assert all(block.project_pw for block in analysis.blocks)
    with_se = [block for block in analysis.blocks if block.se_convs]
    assert len(with_se) == se_blocks
    assert all(len(block.se_convs) == 2 for block in with_se)


def test_generated_block_with_multiplier_and_residual() -> None:
    analysis = analyze(dsconv_model(channels=16, multiplier=2, residual=True))
    (dw,) = analysis.dw_layers
    assert (dw.in_channels, dw.out_channels, dw.depth_multiplier, dw.subgemms) == (32, 64, 2, 2)
    (block,) = analysis.blocks
    assert (block.expand_pw, block.project_pw, block.residual_add) == ("expand_pw", "project_pw", "residual_add")


def test_non_constant_dw_weight_is_skipped_with_reason() -> None:
    model = dsconv_model()
    weight = next(t for t in model.graph.initializer if t.name == "w_dw")
    model.graph.input.append(onnx.helper.make_tensor_value_info("w_dw", onnx.TensorProto.FLOAT,
                                                                list(weight.dims)))
    model.graph.initializer.remove(weight)
    analysis = analyze(model)
    assert not analysis.dw_layers
    assert analysis.skipped[0].name == "dw" and "not a constant" in analysis.skipped[0].reason


def test_inspect_cli_json_lists_layers() -> None:
    result = CliRunner().invoke(main, ["inspect", str(sample_model("mobilenet_v3_small")), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["dw_layers"]) == 11 and data["dw_layers"][0]["strides"] == [2, 1]
    table = CliRunner().invoke(main, ["inspect", str(sample_model("mobilenet_v2"))])
    assert table.exit_code == 0 and "17 DW, 34 PW" in table.stdout


def test_inspect_reads_a_plugin_model_like_its_dense_form(tmp_path) -> None:
    """The model users deploy ('--format plugin') shows its DW layers, sparsity and blocks (before: 0 DW)."""
    source = sample_model("mobilenet_v3_small")
    for form in ("dense", "plugin"):
        done = CliRunner().invoke(main, ["prune", str(source), str(tmp_path / f"{form}.onnx"), "--dw-ratio", "0.5",
                                         "--format", form, "-q"])
        assert done.exit_code == 0, done.output
    listed = {}
    for form in ("dense", "plugin"):
        result = CliRunner().invoke(main, ["inspect", str(tmp_path / f"{form}.onnx"), "--json"])
        assert result.exit_code == 0, result.output
        listed[form] = json.loads(result.stdout)
    assert listed["plugin"]["lowered_custom_ops"] == 11 and listed["dense"]["lowered_custom_ops"] == 0
    for key in ("dw_layers", "pw_layers", "blocks"):
        assert len(listed["plugin"][key]) == len(listed["dense"][key]) > 0, key
    assert [layer["sparsity"] for layer in listed["plugin"]["dw_layers"]] == \
        [layer["sparsity"] for layer in listed["dense"]["dw_layers"]]
    assert all(layer["sparsity"] > 0.3 for layer in listed["plugin"]["dw_layers"])


@pytest.mark.parametrize("scale_first", [False, True])
def test_se_gate_operand_order_does_not_hide_the_projection_pw(scale_first: bool) -> None:
    """torchvision writes the SE gate as Mul(scale, x): the projection PW after it is still a PW layer of the block
    (not an SE conv), with the SE convs and the residual Add found either way."""
    from support.dsconv_graphs import BlockSpec, dsconv_network

    model = dsconv_network([BlockSpec(16, 16, expand=3, se=True, se_scale_first=scale_first, residual=True)])
    analysis = analyze(model)
    (block,) = analysis.blocks
    pw_names = {layer.name for layer in analysis.pw_layers}
    assert block.project_pw in pw_names and block.expand_pw in pw_names
    assert len(block.se_convs) == 2 and set(block.se_convs) == set(analysis.se_convs)
    assert block.residual_add is not None
