"""The numpy oracle (reading packed attributes) equals ONNX Runtime's Conv on the dense masked weights."""
from __future__ import annotations

import numpy as np
import pytest
from support.op_testing import dw_model, max_rel_err, run_ort

from deprune_onnx.errors import DepruneError
from deprune_onnx.op.activations import HARD_SWISH_PARAMS
from deprune_onnx.op.attributes import DRConvParams, encode_attributes
from deprune_onnx.op.oracle import run_dr_sparse_dwconv
from deprune_onnx.op.packing import pack_dr_weights

FP32_TOLERANCE = 1e-5  # the spec's float32 max relative error
FP16_TOLERANCE = 1e-2

# Activation patterns of op_testing.activation_nodes -> what the op stores.
ACTIVATIONS = {
    "none": ("none", ()),
    "relu": ("relu", ()),
    "relu6": ("clip", (0.0, 6.0)),
    "hard_swish": ("hard_swish", HARD_SWISH_PARAMS),
    "hard_sigmoid_mul": ("hard_swish", (float(np.float32(0.2)), 0.5)),
    "silu": ("silu", ()),
}


def _case(channels, kernel, *, multiplier=1, strides=(1, 1), pads=None, dilations=(1, 1), pattern="none",
          batch=1, keep=0.5, seed=0, hw=(13, 10)):
    rng = np.random.default_rng(seed)
    shape = (channels * multiplier, 1, *kernel)
    mask = rng.random(shape) < keep
    weight = (rng.standard_normal(shape) * mask).astype(np.float32)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    pads = pads if pads is not None else (kernel[0] // 2, kernel[1] // 2) * 2
    activation, act_params = ACTIVATIONS[pattern]
    params = DRConvParams(channels=channels, kernel_shape=kernel, depth_multiplier=multiplier, strides=strides,
                          pads=pads, dilations=dilations, activation=activation, activation_params=act_params)
    attrs = encode_attributes(params, pack_dr_weights(weight, bias, keep_mask=mask))
    reference = dw_model(weight, bias, activation=pattern, strides=strides, pads=pads, dilations=dilations,
                         channels=channels, hw=hw)
    x = rng.standard_normal((batch, channels, *hw)).astype(np.float32) * 3
    return x, attrs, run_ort(reference, {"X": x})[0]


@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (7, 7)])
@pytest.mark.parametrize("stride", [1, 2])
def test_kernels_and_strides(kernel, stride):
    x, attrs, expected = _case(40, kernel, strides=(stride, stride))
    got = run_dr_sparse_dwconv(x, attrs)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert max_rel_err(got, expected) <= FP32_TOLERANCE


@pytest.mark.parametrize("case", [
    dict(dilations=(2, 2), batch=4),
    dict(pads=(0, 1, 2, 0), strides=(2, 1), batch=4),           # asymmetric pads, mixed strides
    dict(pads=(2, 0, 1, 3), dilations=(2, 1), kernel=(5, 3)),   # non-square kernel
    dict(multiplier=2, channels=24, batch=4),                   # depth multiplier
    dict(channels=70, keep=0.1),                                # C not a multiple of 32, very sparse
    dict(channels=33, keep=0.0),                                # everything pruned: output is the bias
])
def test_geometry(case):
    case = dict(case)
    x, attrs, expected = _case(case.pop("channels", 40), case.pop("kernel", (3, 3)), **case)
    assert max_rel_err(run_dr_sparse_dwconv(x, attrs), expected) <= FP32_TOLERANCE


@pytest.mark.parametrize("pattern", sorted(ACTIVATIONS))
@pytest.mark.parametrize("batch", [1, 4])
def test_every_activation(pattern, batch):
    x, attrs, expected = _case(40, (3, 3), pattern=pattern, batch=batch, seed=batch)
    assert max_rel_err(run_dr_sparse_dwconv(x, attrs), expected) <= FP32_TOLERANCE


def test_float16_within_tolerance_of_float32():
    x, attrs, expected = _case(40, (5, 5), pattern="hard_swish", batch=2)
    attrs16 = dict(attrs, tap_values=attrs["tap_values"].astype(np.float16), bias=attrs["bias"].astype(np.float16))
    got = run_dr_sparse_dwconv(x.astype(np.float16), attrs16)
    assert got.dtype == np.float16
    assert max_rel_err(got, expected) <= FP16_TOLERANCE


def test_rejects_input_of_wrong_channel_count():
    x, attrs, _ = _case(40, (3, 3))
    with pytest.raises(DepruneError, match="not \\[N, 40, H, W\\]"):
        run_dr_sparse_dwconv(x[:, :39], attrs)
