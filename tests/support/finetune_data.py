"""Tiny classifiers and generated image folders for the ``finetune`` tests (fast on one CPU core)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from support.dsconv_graphs import BlockSpec, dsconv_network

CLASSES = 4


def tiny_classifier(seed: int = 0, batchnorm: bool = False, size: int = 16) -> onnx.ModelProto:
    """input [N, 3, size, size] -> two DSConv blocks (DW widths 48 and 96, so bh alignment has something to do)
    -> [BatchNormalization] -> GlobalAveragePool -> Flatten -> Gemm -> logits [N, CLASSES]."""
    model = dsconv_network([BlockSpec(3, 16, expand=16, stride=2), BlockSpec(16, 16, expand=6, residual=True)],
                           size=size, seed=seed, batch="N")
    graph = model.graph
    rng = np.random.default_rng(seed + 100)
    features = "output"
    if batchnorm:
        graph.initializer.extend([
            numpy_helper.from_array((1 + 0.1 * rng.standard_normal(16)).astype(np.float32), "bn.scale"),
            numpy_helper.from_array((0.1 * rng.standard_normal(16)).astype(np.float32), "bn.bias"),
            numpy_helper.from_array((0.1 * rng.standard_normal(16)).astype(np.float32), "bn.mean"),
            numpy_helper.from_array((1 + 0.2 * rng.random(16)).astype(np.float32), "bn.var")])
        graph.node.append(helper.make_node("BatchNormalization", ["output", "bn.scale", "bn.bias", "bn.mean",
                                                                  "bn.var"], ["normalised"], name="bn"))
        features = "normalised"
    graph.initializer.extend([
        numpy_helper.from_array((0.3 * rng.standard_normal((CLASSES, 16))).astype(np.float32), "fc.weight"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc.bias")])
    graph.node.extend([helper.make_node("GlobalAveragePool", [features], ["pooled"], name="pool"),
                       helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
                       helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES]))
    onnx.checker.check_model(model)
    return model


def image_tree(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """An ImageFolder tree root/<class>/<i>.png of random 20x24 RGB images whose mean colour depends on the
    class (so labels are learnable); returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(CLASSES):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros(3)
            base[label % 3] = 120 + 40 * (label // 3)
            pixels = np.clip(base + 60 * rng.standard_normal((20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{label}" / f"{i}.png")
    return root


def pruned_tiny_classifier(root: Path, method: str) -> dict[str, Path]:
    """In ``root``: the tiny classifier (``teacher``), its ``prune --method METHOD --dw-ratio 0.5 --format dense``
    (``pruned``, with its sidecar ``plan``) and a labelled image ``tree`` of 3 images per class."""
    from support.cli_testing import run_cli

    teacher, pruned = root / "teacher.onnx", root / "pruned.onnx"
    onnx.save(tiny_classifier(), str(teacher))
    result = run_cli("prune", teacher, pruned, "--method", method, "--dw-ratio", "0.5", "--format", "dense", "-q")
    assert result.exit_code == 0, result.output
    return {"teacher": teacher, "pruned": pruned, "plan": root / "pruned.plan.json",
            "tree": image_tree(root / "tree", per_class=3)}
