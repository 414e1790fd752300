"""``finetune --amp``: which autocast dtype and whether a GradScaler (bfloat16 without a scaler where the GPU has
it, float16 + scaler only otherwise), and what happens to optimizer steps the scaler skips (counted per epoch,
the schedule not advanced, a warning when an epoch skipped every step).

No GPU here: the dtype choice is checked with torch.cuda's answers monkeypatched, and the training loop runs on
CPU with the precision forced (CPU bfloat16 autocast; a float16-style GradScaler on CPU whose every step
overflows). This is not a GPU verification: bench/gpu/finetune_smoke.sh is.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from support.cli_testing import run_cli
from support.finetune_data import pruned_tiny_classifier
from deprune_onnx.finetune import train
from deprune_onnx.finetune.train import Precision, precision_for

pytestmark = pytest.mark.torch
torch.set_num_threads(1)  # see tests/test_finetune.py
FAST = ["--workers", "0", "--batch", "4", "--optimizer", "adam", "--lr", "1e-3", "--schedule", "cosine", "--json"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny classifier, its bh prune (DW PR 0.5, dense, sidecar plan) and a labelled image tree."""
    return pruned_tiny_classifier(tmp_path_factory.mktemp("precision"), "bh")


def weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("bf16, expected", [(True, Precision(torch.bfloat16, False)),
                                            (False, Precision(torch.float16, True))])
def test_cuda_amp_is_bfloat16_without_scaler_where_supported(monkeypatch: pytest.MonkeyPatch, bf16: bool,
                                                             expected: Precision) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert precision_for(torch.device("cuda", 0), amp=True) == expected
    assert precision_for(torch.device("cuda", 0), amp=False) == Precision(None, False)
    assert precision_for(torch.device("cpu"), amp=True) == Precision(None, False)
    assert expected.name == ("bfloat16" if bf16 else "float16")


def test_cpu_bfloat16_autocast_trains_and_reports_its_dtype(tiny: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The autocast is device-generic: forced to bfloat16 on CPU, every step is taken (no scaler), the weights
    change, the masks stay, and the report names the dtype."""
    monkeypatch.setattr(train, "precision_for", lambda device, amp: Precision(torch.bfloat16, False))
    out = tmp_path / "bf16.onnx"
    result = run_cli("finetune", tiny["pruned"], out, "--teacher", tiny["teacher"], "--images", tiny["tree"],
                     "--epochs", "2", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    extra = report["training"]["extra"]
    assert (extra["autocast"], extra["grad_scaler"], extra["amp"], extra["warnings"]) == ("bfloat16", False, True, [])
    epochs = report["history"][1:]
    assert all(r["steps"] > 0 and r["skipped_steps"] == 0 for r in epochs)
    assert epochs[1]["lr"] < epochs[0]["lr"]  # the cosine schedule advanced
    before, after = weights(tiny["pruned"]), weights(out)
    assert any(not np.array_equal(before[k], after[k]) for k in before) or report["best_epoch"] == 0
    assert all(r["val_kl"] != report["history"][0]["val_kl"] for r in epochs)  # the student changed
    for name, value in before.items():
        assert np.array_equal(value == 0, after[name] == 0) or value.ndim != 4, name


def test_steps_a_scaler_skips_are_counted_do_not_advance_the_schedule_and_warn(
        tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GradScaler whose every step overflows (loss x 1e30 at scale 2^100: inf in float32, as float16
    gradients overflow at 2^16): each epoch records all its steps as skipped, the weights do not move (epoch 0,
    the pruned model, is written unchanged), the cosine schedule stays at its first lr, and every epoch is a
    warning on stderr and in the report."""
    monkeypatch.setattr(train, "precision_for", lambda device, amp: Precision(None, True))
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 100))
    original = train.distillation_loss
    monkeypatch.setattr(train, "distillation_loss", lambda *args: (original(*args)[0] * 1e30, original(*args)[1]))
    out = tmp_path / "skipped.onnx"
    result = run_cli("finetune", tiny["pruned"], out, "--teacher", tiny["teacher"], "--images", tiny["tree"],
                     "--epochs", "2", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    epochs = report["history"][1:]
    assert all(r["steps"] > 0 and r["skipped_steps"] == r["steps"] for r in epochs)
    assert epochs[0]["lr"] == epochs[1]["lr"] == 1e-3
    assert all(r["val_kl"] == report["history"][0]["val_kl"] for r in epochs)
    assert report["best_epoch"] == 0
    before, after = weights(tiny["pruned"]), weights(out)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    warnings = report["training"]["extra"]["warnings"]
    assert len(warnings) == 2 and all("optimizer step(s) skipped" in w for w in warnings)
    assert result.stderr.count("warning: epoch") == 2


def test_a_normal_cpu_run_records_its_steps_and_skips_none(tiny: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("finetune", tiny["pruned"], tmp_path / "o.onnx", "--teacher", tiny["teacher"], "--images",
                     tiny["tree"], "--epochs", "1", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    record = report["history"][1]
    assert record["steps"] == report["training"]["steps_per_epoch"] and record["skipped_steps"] == 0
    assert report["training"]["extra"]["autocast"] == "float32" and report["training"]["extra"]["warnings"] == []
