"""``torchrun --nproc_per_node 2 -m deprune_onnx.finetune``: two gloo processes on CPU train what one process
trains with the same global batch, and only rank 0 writes files.

Which process writes is recorded by a wrapper that torchrun starts instead of the module: it wraps the two
writers the command uses (``save_model`` and ``write_bytes_atomic``, which every JSON, PNG and checkpoint goes
through) to log the paths written into one file per rank, then runs ``deprune_onnx.finetune`` as ``__main__`` exactly as ``-m`` does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from support.cli_testing import run_cli
from support.finetune_data import image_tree, tiny_classifier

pytestmark = pytest.mark.torch

WRAPPER = '''
import os, runpy, sys
from deprune_onnx.onnx_io import load_save

log = open(f"{os.environ['WRITE_LOG']}.{os.environ.get('RANK', 'single')}", "a")
def traced(function):
    def write(*args, **kwargs):  # save_model(model, path), write_bytes_atomic(path, data)
        for path in (a for a in args if isinstance(a, (str, os.PathLike))):
            log.write(f"{path}\\n"); log.flush()
        return function(*args, **kwargs)
    return write
load_save.write_bytes_atomic = traced(load_save.write_bytes_atomic)
load_save.save_model = traced(load_save.save_model)
sys.argv = ["deprune_onnx.finetune", *sys.argv[1:]]
runpy.run_module("deprune_onnx.finetune", run_name="__main__")
'''


def weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_two_gloo_processes_equal_one_process_and_only_rank_0_writes(tmp_path: Path) -> None:
    onnx.save(tiny_classifier(), str(tmp_path / "teacher.onnx"))
    assert run_cli("prune", tmp_path / "teacher.onnx", tmp_path / "pruned.onnx", "--method", "bh", "--dw-ratio",
                   "0.5", "--format", "dense", "-q").exit_code == 0
    tree = image_tree(tmp_path / "tree", per_class=4)
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    common = ["--teacher", str(tmp_path / "teacher.onnx"), "--images", str(tree), "--epochs", "2", "--batch", "4",
              "--optimizer", "adam", "--lr", "1e-3", "--workers", "0", "--select", "kl", "-q"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "WRITE_LOG": str(tmp_path / "single.log")}
    single = subprocess.run([sys.executable, str(tmp_path / "wrapper.py"), str(tmp_path / "pruned.onnx"),
                             str(tmp_path / "one.onnx"), *common], env=environment, capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr
    environment["WRITE_LOG"] = str(tmp_path / "ddp.log")
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "wrapper.py"), str(tmp_path / "pruned.onnx"), str(tmp_path / "two.onnx"),
                          *common], env=environment, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    # the last epoch's states and the written (best-epoch) models agree
    last = [torch.load(tmp_path / f"{n}.checkpoints" / "last.pt", weights_only=True)["model"] for n in ("one", "two")]
    assert last[0].keys() == last[1].keys()
    for name, value in last[0].items():
        torch.testing.assert_close(last[1][name], value, rtol=1e-4, atol=1e-5 * max(1.0, float(value.abs().max())))
    one, two = weights(tmp_path / "one.onnx"), weights(tmp_path / "two.onnx")
    assert one.keys() == two.keys()
    for name, value in one.items():
        np.testing.assert_allclose(two[name], value, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(value).max())),
                                   err_msg=name)
    reports = [json.loads((tmp_path / f"{n}.finetune.json").read_text()) for n in ("one", "two")]
    assert [r["training"]["extra"]["processes"] for r in reports] == [1, 2]
    assert [r["training"]["extra"]["loader_batch"] for r in reports] == [4, 2]
    assert reports[0]["best_epoch"] == reports[1]["best_epoch"]
    assert reports[0]["history"][2]["val_kl"] != reports[0]["history"][0]["val_kl"]  # training changed the model
    for a, b in zip(reports[0]["history"], reports[1]["history"]):
        assert b["val_kl"] == pytest.approx(a["val_kl"], rel=1e-4, abs=1e-7)

    assert sorted(p.name for p in tmp_path.glob("ddp.log.*")) == ["ddp.log.0", "ddp.log.1"]
    assert (tmp_path / "ddp.log.1").read_text() == ""  # rank 1 wrote nothing
    written = {Path(path).name for path in (tmp_path / "ddp.log.0").read_text().splitlines()}
    assert {"two.onnx", "two.plan.json", "two.finetune.json", "two.finetune.png", "last.pt"} <= written
