"""The packed DR layout against references that do not come from the packer's own unpacker.

1. One tiny case whose four packed fields are written out by hand from the spec (op PluginConfig YAML:
   kept_counts, tap_indices padded to the tile by repeating the last kept index, tap_values 0 for padding, bias).
2. Random cases, non-square kernels, bias present and absent: a spec reader written here (a plain loop over
   sub-GEMMs and slots) rebuilds the dense weight, and the numpy oracle that computes from the packed fields is
   compared with ONNX Runtime's Conv on the dense masked weights.
"""
from __future__ import annotations

import numpy as np
import pytest

from deprune_onnx.errors import DepruneError

from deprune_onnx.op.attributes import DRConvParams, encode_attributes
from deprune_onnx.op.oracle import run_dr_sparse_dwconv
from deprune_onnx.op.packing import pack_dr_weights, unpack_dr_weights
from support.op_testing import dw_model, max_rel_err, run_ort


def test_hand_written_layout_of_a_tiny_case() -> None:
    # C_out 3, kernel 1x3 (non-square), 2 channels per sub-GEMM -> G = 2, tile 4.
    # flat index o*3 + kx:  0  1  2 | 3  4  5 | 6  7  8
    weight = np.array([1, 0, 2, 0, 3, 0, 0, 5, 6], dtype=np.float32).reshape(3, 1, 1, 3)
    keep = np.array([1, 0, 1, 1, 1, 0, 0, 1, 1], dtype=bool).reshape(3, 1, 1, 3)  # flat 3 is a kept zero
    bias = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    packed = pack_dr_weights(weight, bias, keep_mask=keep, subgemm_channels=2, k_tile=4)
    assert packed.kept_counts.dtype == np.int32 and packed.kept_counts.tolist() == [4, 2]
    assert packed.tap_indices.dtype == np.int32
    assert packed.tap_indices.tolist() == [0, 2, 3, 4, 7, 8, 8, 8]
    assert packed.tap_values.dtype == np.float32
    assert packed.tap_values.tolist() == [1, 2, 0, 3, 5, 6, 0, 0]
    assert packed.bias.tolist() == [0.5, -1.0, 2.0]
    no_bias = pack_dr_weights(weight, keep_mask=keep, subgemm_channels=2, k_tile=4)
    assert no_bias.bias.dtype == np.float32 and no_bias.bias.tolist() == [0, 0, 0]
    # without a mask the non-zero weights are kept: the kept zero at 3 disappears, group 0 pads 3 -> 4
    implicit = pack_dr_weights(weight, bias, subgemm_channels=2, k_tile=4)
    assert implicit.kept_counts.tolist() == [3, 2]
    assert implicit.tap_indices.tolist() == [0, 2, 4, 4, 7, 8, 8, 8]
    assert implicit.tap_values.tolist() == [1, 2, 3, 0, 5, 6, 0, 0]


def test_hand_written_layout_with_an_empty_subgemm_and_default_sizes() -> None:
    weight = np.zeros((40, 1, 2, 1), dtype=np.float16)  # 2x1 kernel, G = 2 with the default 32 channels
    weight[33, 0, 1, 0] = 1.5  # flat 67, the only kept weight, in sub-GEMM 1
    packed = pack_dr_weights(weight)
    assert packed.kept_counts.tolist() == [0, 1]
    assert packed.tap_indices.tolist() == [67] * 32
    assert packed.tap_values.dtype == np.float16 and packed.tap_values.tolist() == [1.5] + [0.0] * 31
    assert packed.bias.dtype == np.float16 and packed.bias.shape == (40,) and not packed.bias.any()


def spec_reader(kept_counts, tap_indices, tap_values, c_out, kh, kw, k_tile) -> np.ndarray:
    """The dense weight as the spec describes the layout: block g holds ceil(K_g/T)*T slots, the first K_g kept."""
    dense = np.zeros(c_out * kh * kw, dtype=np.float64)
    start = 0
    for count in kept_counts.tolist():
        for slot in range(count):
            dense[tap_indices[start + slot]] = tap_values[start + slot]
        start += -(-count // k_tile) * k_tile
    assert start == tap_indices.size == tap_values.size
    return dense.reshape(c_out, 1, kh, kw)


CASES = [  # channels, multiplier, kernel, strides, pads, dilations, subgemm channels, tile
    (40, 1, (3, 5), (1, 2), (1, 2, 1, 2), (1, 1), 32, 32),
    (70, 1, (5, 3), (2, 1), (2, 0, 1, 3), (2, 1), 32, 32),
    (17, 2, (1, 7), (1, 1), (0, 3, 0, 3), (1, 1), 8, 16),
    (33, 1, (7, 1), (1, 1), (3, 0, 3, 0), (1, 2), 32, 8),
    (24, 1, (2, 3), (2, 2), (0, 0, 1, 1), (1, 1), 4, 5),
]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"c{c[0]}x{c[1]}_k{c[2][0]}x{c[2][1]}_t{c[7]}")
def test_packed_fields_and_oracle_match_ort_conv_on_the_dense_masked_weight(case, with_bias: bool) -> None:
    channels, multiplier, kernel, strides, pads, dilations, sgc, tile = case
    rng = np.random.default_rng(channels * 7 + kernel[0])
    shape = (channels * multiplier, 1, *kernel)
    keep = rng.random(shape) < 0.4
    weight = (rng.standard_normal(shape) * keep).astype(np.float32)
    bias = rng.standard_normal(shape[0]).astype(np.float32) if with_bias else None
    packed = pack_dr_weights(weight, bias, keep_mask=keep, subgemm_channels=sgc, k_tile=tile)
    np.testing.assert_array_equal(spec_reader(packed.kept_counts, packed.tap_indices, packed.tap_values,
                                              shape[0], *kernel, tile), weight)
    np.testing.assert_array_equal(packed.bias, bias if with_bias else np.zeros(shape[0], np.float32))
    params = DRConvParams(channels=channels, kernel_shape=kernel, depth_multiplier=multiplier, strides=strides,
                          pads=pads, dilations=dilations, subgemm_channels=sgc, k_tile=tile)
    x = (rng.standard_normal((2, channels, 11, 13)) * 2).astype(np.float32)
    reference = dw_model(weight, bias, strides=strides, pads=pads, dilations=dilations, channels=channels,
                         hw=(11, 13))
    expected = run_ort(reference, {"X": x})[0]
    got = run_dr_sparse_dwconv(x, encode_attributes(params, packed))
    assert got.shape == expected.shape
    assert max_rel_err(got, expected) <= 1e-5


def test_packer_and_unpacker_reject_bad_shapes_with_the_reason() -> None:
    weight = np.ones((4, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"DW weight must be \[C_out, 1, kh, kw\], got \[4, 2, 3, 3\]"):
        pack_dr_weights(np.ones((4, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"got \[4, 9\]"):
        pack_dr_weights(np.ones((4, 9), np.float32))
    with pytest.raises(ValueError, match=r"keep_mask shape \[4, 1, 3, 2\] differs from weight shape \[4, 1, 3, 3\]"):
        pack_dr_weights(weight, keep_mask=np.ones((4, 1, 3, 2), bool))
    with pytest.raises(ValueError, match=r"bias must have shape \[4\], got \[3\]"):
        pack_dr_weights(weight, np.ones(3, np.float32))
    packed = pack_dr_weights(weight, np.ones(4))  # a float64 bias is stored in the weight's dtype
    assert packed.bias.dtype == np.float32
    short = type(packed)(packed.kept_counts, packed.tap_indices[:-1], packed.tap_values, packed.bias)
    with pytest.raises(ValueError, match="^tap_indices/tap_values length does not match kept_counts and k_tile$"):
        unpack_dr_weights(short, 4, 3, 3)
    shorter = type(packed)(packed.kept_counts, packed.tap_indices, packed.tap_values[:-1], packed.bias)
    with pytest.raises(ValueError, match="length does not match"):
        unpack_dr_weights(shorter, 4, 3, 3)
    dense, _ = unpack_dr_weights(packed, 4, 3, 3)  # the default tile is the packer's default, 32
    np.testing.assert_array_equal(dense, weight)


def test_oracle_output_of_one_pixel_and_inputs_too_small() -> None:
    rng = np.random.default_rng(12)
    weight = rng.standard_normal((8, 1, 3, 5)).astype(np.float32)
    params = DRConvParams(channels=8, kernel_shape=(3, 5), subgemm_channels=8, k_tile=8)
    attrs = encode_attributes(params, pack_dr_weights(weight, np.ones(8, np.float32), subgemm_channels=8, k_tile=8))
    x = rng.standard_normal((1, 8, 3, 5)).astype(np.float32)  # output exactly 1x1
    expected = run_ort(dw_model(weight, np.ones(8, np.float32), pads=(0, 0, 0, 0), channels=8, hw=(3, 5)), {"X": x})[0]
    got = run_dr_sparse_dwconv(x, attrs)
    assert got.shape == (1, 8, 1, 1) and max_rel_err(got, expected) <= 1e-5
    for hw in ((2, 5), (3, 4), (2, 4)):  # too short, too narrow, both
        with pytest.raises(DepruneError, match=rf"^DRSparseDepthwiseConv: input {hw[0]}x{hw[1]} is too small for the "
                                               "kernel and pads$"):
            run_dr_sparse_dwconv(np.zeros((1, 8, *hw), np.float32), attrs)
