"""The streaming writer: what it writes parses back to the same model, inline or with external data."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest

from support.samples import sample_model
from deprune_onnx.onnx_io import load_save as model_io
from deprune_onnx.onnx_io.proto_stream import EXTERNAL_ALIGNMENT, write_model
from support.op_testing import run_ort


def test_inline_write_parses_to_the_same_model(any_sample_model: Path) -> None:
    model = onnx.load(str(any_sample_model))
    buffer = io.BytesIO()
    write_model(model, buffer)
    again = onnx.load_from_string(buffer.getvalue())
    assert again.SerializeToString(deterministic=True) == model.SerializeToString(deterministic=True)


def test_save_model_with_external_data_round_trips_and_runs(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Forced external: every tensor >= 1 KiB lands, page-aligned, in out.onnx.data; load_model reads it back."""
    source = sample_model("mobilenet_v2")
    model = onnx.load(str(source))
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)
    out = model_io.save_model(model, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    assert out.stat().st_size < 200_000  # the weights are outside
    skeleton = onnx.load_model(str(out), load_external_data=False)
    offsets = [int(e.value) for t in skeleton.graph.initializer for e in t.external_data if e.key == "offset"]
    assert offsets and all(offset % EXTERNAL_ALIGNMENT == 0 for offset in offsets)
    loaded = model_io.load_model(out)
    for got, want in zip(loaded.graph.initializer, model.graph.initializer):
        assert got.name == want.name
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(got), onnx.numpy_helper.to_array(want))
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    want, got = run_ort(source, feeds)[0], run_ort(out, feeds)[0]
    np.testing.assert_array_equal(got, want)


def test_write_failure_is_one_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing write (disk full here) is one DepruneError naming the output; no file, no staging folder."""
    def disk_full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(model_io, "write_model", disk_full)
    with pytest.raises(model_io.DepruneError, match="out.onnx: cannot write .No space left on device"):
        model_io.save_model(onnx.load(str(sample_model("mobilenet_v2"))), tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []
