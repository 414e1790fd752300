"""The DR packer: pack -> unpack is exact, the layout matches the spec, and the reader rejects corrupt packs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from deprune_onnx.errors import DepruneError
from deprune_onnx.op.attributes import DRConvParams, decode_attributes, encode_attributes, kept_slot_mask
from deprune_onnx.op.packing import pack_dr_weights, subgemm_offsets, unpack_dr_weights


def _masked(shape, keep, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(shape).astype(dtype)
    mask = rng.random(shape) < keep
    return weight * mask, mask


@pytest.mark.parametrize("c_out,kernel,keep,sgc,tile,dtype", [
    (32, (3, 3), 0.5, 32, 32, np.float32),
    (40, (3, 3), 0.3, 32, 32, np.float32),     # partial last sub-GEMM
    (144, (5, 5), 0.7, 32, 32, np.float16),
    (88, (7, 7), 0.1, 32, 8, np.float32),
    (8, (3, 5), 0.0, 32, 32, np.float32),      # everything pruned
    (17, (3, 3), 1.0, 4, 5, np.float32),       # dense, odd sub-GEMM and tile sizes
])
def test_round_trip_is_exact(c_out, kernel, keep, sgc, tile, dtype):
    weight, mask = _masked((c_out, 1, *kernel), keep, seed=c_out, dtype=dtype)
    bias = np.linspace(-1, 1, c_out).astype(dtype)
    packed = pack_dr_weights(weight, bias, keep_mask=mask, subgemm_channels=sgc, k_tile=tile)
    dense, bias_back = unpack_dr_weights(packed, c_out, *kernel, k_tile=tile)
    assert dense.dtype == weight.dtype and np.array_equal(dense, weight)
    assert np.array_equal(bias_back, bias)
    # Layout: K_g per sub-GEMM, blocks padded to the tile, padding valued 0.
    group_of_tap = np.flatnonzero(mask.reshape(-1)) // (sgc * kernel[0] * kernel[1])
    assert np.array_equal(packed.kept_counts, np.bincount(group_of_tap, minlength=-(-c_out // sgc)))
    assert packed.tap_indices.size == subgemm_offsets(packed.kept_counts, tile)[-1]
    assert packed.tap_indices.size % tile == 0
    assert np.all(packed.tap_values[~kept_slot_mask(packed.kept_counts, tile)] == 0)
    params = DRConvParams(channels=c_out, kernel_shape=kernel, subgemm_channels=sgc, k_tile=tile)
    decode_attributes(encode_attributes(params, packed))  # the reader accepts what the packer writes


def test_exact_zero_kept_weights_stay_kept():
    """HSR aligns kept counts to the tile; a kept weight that is 0 must still occupy its K column."""
    weight, mask = _masked((32, 1, 3, 3), 0.5, seed=3)
    zero_kept = np.flatnonzero(mask.reshape(-1))[:5]
    weight.reshape(-1)[zero_kept] = 0
    packed = pack_dr_weights(weight, keep_mask=mask)
    assert packed.kept_counts.sum() == mask.sum()
    assert np.array_equal(packed.tap_indices[: mask.sum()], np.flatnonzero(mask.reshape(-1)))
    assert pack_dr_weights(weight).kept_counts.sum() == mask.sum() - 5  # non-zero pattern loses them


def _valid_attrs():
    weight, mask = _masked((40, 1, 3, 3), 0.5, seed=1)
    params = DRConvParams(channels=20, depth_multiplier=2, kernel_shape=(3, 3), k_tile=16)
    return encode_attributes(params, pack_dr_weights(weight, keep_mask=mask, k_tile=16))


def _corrupt(name, transform):
    attrs = _valid_attrs()
    attrs[name] = transform(attrs[name].copy() if isinstance(attrs[name], np.ndarray) else attrs[name])
    return attrs


def _set(array, index, value):
    array[index] = value
    return array


@pytest.mark.parametrize("attrs,message", [
    (_corrupt("kept_counts", lambda a: _set(a, 0, a[0] + 16)), "entries"),
    (_corrupt("kept_counts", lambda a: _set(a, 0, a[0] + 1)), "strictly increasing"),  # padding read as kept
    (_corrupt("kept_counts", lambda a: a[:1]), "sub-GEMMs"),
    (_corrupt("tap_indices", lambda a: _set(a, 0, 40 * 9 + 3)), "outside"),
    (_corrupt("tap_indices", lambda a: _set(a, 1, a[0])), "strictly increasing"),
    (_corrupt("tap_values", lambda a: a.astype(np.float64)), "float32 or float16"),
    (_corrupt("tap_values", lambda a: _set(a, -1, 1.0)), "padding"),
    (_corrupt("bias", lambda a: a[:-1]), "bias"),
    (_corrupt("kernel_shape", lambda a: [3, 17]), "kernel_shape"),
    (_corrupt("pads", lambda a: [1, 1, 1]), "pads"),
    (_corrupt("activation", lambda a: "gelu"), "activation"),
    (_corrupt("plugin_namespace", lambda a: "other"), "plugin_namespace"),
    ({k: v for k, v in _valid_attrs().items() if k != "tap_values"}, "missing"),
])
def test_reader_rejects_corrupt_attributes(attrs, message):
    with pytest.raises(DepruneError, match=message):
        decode_attributes(attrs, where="node 'x'")


def test_reader_rejects_wrong_padding_index():
    attrs = _valid_attrs()
    kept = kept_slot_mask(attrs["kept_counts"], 16)
    attrs["tap_indices"][np.flatnonzero(~kept)[0]] -= 1
    with pytest.raises(DepruneError, match="repeat"):
        decode_attributes(attrs)


def test_params_validation_names_the_rule():
    params = DRConvParams(channels=4, kernel_shape=(3, 3), activation="clip", activation_params=(6.0, 0.0))
    assert "min <= max" in params.validate()
    assert dataclasses.replace(params, activation_params=(0.0, 6.0)).validate() is None
