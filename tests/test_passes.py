"""One pass contract: every step that changes a model takes ``in_place`` and returns ``(model, record)``.

With ``in_place=False`` (the default) the input is left byte-identical and a new model comes back; with
``in_place=True`` the step edits and returns the model it was given (the prune pipeline's memory bound). Both
give the same model bytes.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from deprune_onnx.analysis import analyze
from deprune_onnx.dw.apply import apply_dw_masks
from deprune_onnx.dw.planner import plan_dw_layers
from deprune_onnx.onnx_io.float16 import convert_to_float16
from deprune_onnx.op.rewrite import rewrite_to_plugin
from deprune_onnx.options import DWOptions
from deprune_onnx.pw import apply_nm24, apply_pw_plan, plan_pw_pruning
from deprune_onnx.recovery.refit import RefitRecord, reconstruct
from support.builders import dsconv_model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _masked() -> tuple[onnx.ModelProto, onnx.ModelProto, list]:
    model = dsconv_model(channels=16, expand=4, size=8)
    plans = plan_dw_layers(model, analyze(model), DWOptions(method="b", dw_ratio=0.5))
    return model, apply_dw_masks(model, plans)[0], plans


def _passes():
    model, masked, plans = _masked()
    keep = {plan.name: plan.keep_mask() for plan in plans}
    inputs = np.random.default_rng(0).standard_normal((4, 16, 8, 8)).astype(np.float32)
    return {
        "apply_pw_plan": (model, lambda m, **kw: apply_pw_plan(
            m, plan_pw_pruning(model, ratio=0.5, align=8, scope="all"), **kw), dict),
        "apply_dw_masks": (model, lambda m, **kw: apply_dw_masks(m, plans, **kw), list),
        "reconstruct": (masked, lambda m, **kw: reconstruct(m, model, analyze(model), plans, inputs, **kw),
                        RefitRecord),
        "apply_nm24": (model, lambda m, **kw: apply_nm24(m, **kw), list),
        "rewrite_to_plugin": (masked, lambda m, **kw: rewrite_to_plugin(m, keep, **kw), list),
        "convert_to_float16": (model, lambda m, **kw: convert_to_float16(m, **kw), dict),
    }


@pytest.mark.parametrize("name", sorted(_passes()))
def test_pass_contract(name: str) -> None:
    source, step, record_type = _passes()[name]
    before = source.SerializeToString()
    copied, record = step(source)
    assert isinstance(record, record_type) and record
    assert source.SerializeToString() == before and copied is not source  # default: a copy, input untouched
    own = _copy(source)
    edited, again = step(own, in_place=True)
    if name == "rewrite_to_plugin":  # its copy is an onnx-graphsurgeon export: model fields in another order
        assert edited.graph.SerializeToString() == copied.graph.SerializeToString()
    else:
        assert edited.SerializeToString() == copied.SerializeToString()
    if name != "convert_to_float16":  # onnxconverter-common may return a new message for the same model
        assert edited is own
    assert type(again) is type(record)
