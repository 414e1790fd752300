"""The real sample models in samples/: MobileNetV2 (residual Adds), MobileNetV3-Small and PP-LCNet (SE,
hard-swish), at ratio 0.5 with scope project and scope all."""
from __future__ import annotations


import numpy as np
import onnx
import pytest

from support.samples import SAMPLES_DIR
from deprune_onnx.pw import apply_nm24, count_macs, count_params, pw_report, summarize_model
from deprune_onnx.onnx_io.shapes import infer_tensor_shapes
from support.pw_graphs import assert_exact_pruning, random_feeds, run

pytestmark = pytest.mark.model

MODELS = SAMPLES_DIR
# MobileNetV3-Small x0.35 has 8..48-channel projections: only an 8-channel tile can cut them.
ALIGN = {"mobilenet_v2_torchvision": 32, "pplcnet_x1_0_doc_orientation_rapid": 32,
         "ppocr_mobile_v2_cls_mobilenetv3_small": 8}


def _load(name: str) -> onnx.ModelProto:
    path = MODELS / f"{name}.onnx"
    return onnx.load(str(path))


# The ppocr export ships value_info with dim -1, so it fails ONNX's full check before any pruning; only it is
# checked without shape inference (test_only_ppocr_fails_the_full_check_before_pruning keeps this true).
NO_FULL_CHECK = {"ppocr_mobile_v2_cls_mobilenetv3_small"}


@pytest.mark.parametrize("name", sorted(ALIGN))
def test_only_ppocr_fails_the_full_check_before_pruning(name):
    model = _load(name)
    if name in NO_FULL_CHECK:
        with pytest.raises(onnx.shape_inference.InferenceError):
            onnx.checker.check_model(model, full_check=True)
    else:
        onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("scope", ["project", "all"])
@pytest.mark.parametrize("name", sorted(ALIGN))
def test_real_model_pruned_exactly_with_reduced_shapes_and_costs(name, scope):
    model = _load(name)
    align = ALIGN[name]
    plan, pruned = assert_exact_pruning(model, ratio=0.5, align=align, scope=scope,
                                        full_check=name not in NO_FULL_CHECK)
    shapes = infer_tensor_shapes(pruned)
    for entry in plan.groups:
        assert entry.kept % align == 0 and entry.aligned
        assert abs(entry.kept - entry.channels * 0.5) <= align
        for member in entry.members:
            assert shapes[member["tensor"]][1] == member["channels"] - len(entry.removed)
    report = pw_report(plan, summarize_model(model), pruned)
    assert report["params"] == {"before": count_params(model), "after": count_params(pruned)}
    assert report["macs"] == {"before": count_macs(model), "after": count_macs(pruned)}
    assert report["params"]["after"] < report["params"]["before"]
    assert report["macs"]["after"] < report["macs"]["before"]
    assert report["pw_channels"]["after"] < report["pw_channels"]["before"]
    assert all(row["reason"] for row in report["groups"] if not row["pruned"])
    assert any(row["out_channels_after"] < row["out_channels_before"] for row in report["layers"])


@pytest.mark.parametrize("name", sorted(ALIGN))
def test_real_model_nm24(name):
    model = _load(name)
    masked, rows = apply_nm24(model)
    assert any(row["qualifies"] for row in rows)
    assert all(row["sparsity_after"] >= 0.5 for row in rows if row["qualifies"])
    feeds = random_feeds(model)
    assert [o.shape for o in run(masked, feeds)] == [o.shape for o in run(model, feeds)]
    assert np.isfinite(run(masked, feeds)[0]).all()
