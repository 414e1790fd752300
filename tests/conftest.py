"""Shared fixtures: the real models of ../shared/models and small generated DSConv graphs."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_MODELS = {
    "mobilenet_v2": SHARED / "models" / "mobilenet_v2_torchvision.onnx",
    "mobilenet_v3_small": SHARED / "models" / "ppocr_mobile_v2_cls_mobilenetv3_small.onnx",
    "pplcnet": SHARED / "models" / "pplcnet_x1_0_doc_orientation_rapid.onnx",
}
SAMPLE_MODEL = REPO / "samples" / "mobilenet_v2_torchvision.onnx"


def shared_model(key: str) -> Path:
    path = SHARED_MODELS[key]
    if not path.is_file():
        pytest.fail(f"shared model {path} is missing: tests need ../shared/models beside the checkout")
    return path


@pytest.fixture(params=sorted(SHARED_MODELS))
def any_shared_model(request: pytest.FixtureRequest) -> Path:
    return shared_model(request.param)

IMAGENET_SAMPLES = SHARED / "data" / "imagenet_samples"


def imagenet_samples() -> Path:
    if not IMAGENET_SAMPLES.is_dir():
        pytest.fail(f"{IMAGENET_SAMPLES} is missing: tests need ../shared/data beside the checkout")
    return IMAGENET_SAMPLES
