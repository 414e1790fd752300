"""Same input and options -> byte-identical files, whatever the hash seed; concurrent writers never corrupt."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from support.samples import sample_model
from support.dsconv_graphs import BlockSpec, dsconv_network
from deprune_onnx.onnx_io import load_save as model_io

pytestmark = pytest.mark.model


def _digests(output: Path) -> list[str]:
    stem = output.name[: -len(".onnx")]
    return [hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (output, output.with_name(stem + ".report.json"), output.with_name(stem + ".plan.json"))]


def test_outputs_are_byte_identical_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    source = sample_model("mobilenet_v3_small")  # SE blocks, hard-swish, partial sub-GEMMs
    digests = []
    for seed in ("0", "1", "4242"):
        out = tmp_path / seed / "out.onnx"
        out.parent.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-m", "deprune_onnx.cli.main", "prune", str(source), str(out),
                               "--method", "bh", "--dw-ratio", "0.7", "--layer-ratio", "*=0.6", "-q"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        digests.append(_digests(out))
    assert digests[0] == digests[1] == digests[2]


def _writer(model_bytes: bytes, output: str, rounds: int, external: bool) -> None:
    if external:
        model_io.EXTERNAL_DATA_THRESHOLD_BYTES = 0
    model = onnx.load_from_string(model_bytes)
    for _ in range(rounds):
        model_io.save_model(model, output)


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_concurrent_writers_never_leave_a_corrupt_file(tmp_path: Path, external: bool) -> None:
    """Two processes save different models to one path 30 times each while this process keeps reading it:
    every read is one whole model, and the final model (and its data file) is exactly one writer's."""
    models = [dsconv_network([BlockSpec(16, 16, expand=4 + i)], size=8, seed=i) for i in range(2)]
    output = tmp_path / "shared.onnx"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_writer, args=(m.SerializeToString(), str(output), 30, external))
               for m in models]
    for writer in writers:
        writer.start()
    expected_graphs = {m.graph.name + str(len(m.graph.initializer[0].raw_data)) for m in models}
    reads = 0
    while any(w.is_alive() for w in writers):
        if output.exists() and not external:
            loaded = onnx.load_from_string(output.read_bytes())
            assert loaded.graph.name + str(len(loaded.graph.initializer[0].raw_data)) in expected_graphs
            reads += 1
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    final = onnx.load(str(output))  # loads the external data too
    onnx.checker.check_model(final)
    weights = [onnx.numpy_helper.to_array(t).tobytes() for t in final.graph.initializer]
    assert weights in [[onnx.numpy_helper.to_array(t).tobytes() for t in m.graph.initializer] for m in models]
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("shared.onnx", "shared.onnx.data"))
    assert leftovers == []
    assert external == (tmp_path / "shared.onnx.data").exists()
