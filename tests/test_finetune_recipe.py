"""docs/finetune.md path 2, executed: export-masks -> masks on torchvision's MobileNetV2 by parameter name ->
training steps with weight decay -> torch.onnx.export -> prune --keep-zeros reproduces the plan's masks."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from support.samples import REPO, sample_model
from deprune_onnx.cli.main import main
from deprune_onnx.plan import load_plan

pytestmark = pytest.mark.torch


def recipe_helpers() -> dict[str, object]:
    """Run the docs' python block that defines attach_masks / reapply_masks and return its namespace."""
    text = (REPO / "docs" / "finetune.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "def attach_masks" in b]
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "docs/finetune.md", "exec"), namespace)
    return namespace


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.9+ calls the TorchScript exporter legacy
def test_docs_recipe_round_trip_through_pytorch_training_code(tmp_path: Path) -> None:
    runner = CliRunner()
    pruned = tmp_path / "pruned.onnx"
    assert runner.invoke(main, ["prune", str(sample_model("mobilenet_v2")), str(pruned), "--method", "bh",
                                "--dw-ratio", "0.5", "--format", "dense", "-q"]).exit_code == 0
    assert runner.invoke(main, ["export-masks", str(tmp_path / "pruned.plan.json"), str(tmp_path / "m.npz"),
                                "-q"]).exit_code == 0

    helpers = recipe_helpers()
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None)  # the architecture the shared ONNX came from
    masked = helpers["attach_masks"](model, str(tmp_path / "m.npz"))
    assert len(masked) == 17
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for _ in range(2):
        loss = model(torch.randn(2, 3, 224, 224)).logsumexp(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        helpers["reapply_masks"](masked)
    for parameter, keep in masked.values():
        assert torch.all(parameter[~keep] == 0) and torch.all(parameter[keep] != 0)

    model.eval()
    exported = tmp_path / "tuned.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), str(exported), input_names=["input"],
                      output_names=["logits"], dynamo=False)
    result = runner.invoke(main, ["prune", str(exported), str(tmp_path / "again.onnx"), "--keep-zeros",
                                  "--method", "bh", "--format", "dense"])
    assert result.exit_code == 0, result.output
    assert "--keep-zeros:" not in result.output  # aligned and balanced, as the bh plan made them
    original, reproduced = load_plan(tmp_path / "pruned.plan.json"), load_plan(tmp_path / "again.plan.json")
    assert len(reproduced.dw_layers) == len(original.dw_layers)
    for before, after in zip(original.dw_layers, reproduced.dw_layers):
        assert np.array_equal(before.keep_mask(), after.keep_mask()), before.name
