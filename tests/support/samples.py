"""The real models and images the tests use, all from inside the checkout or from installed test dependencies.

Models: the three pretrained models of ``samples/`` (licences in samples/README.md). Images: the ImageNet
validation samples that the ``foolbox`` test dependency ships as package data (labels in the file names,
``imagenet_<index>_<label>.jpg``); the first ten are copied into one temporary folder per test session so the
tests can glob and list them like any user folder. Nothing here reads outside the repository and site-packages.
"""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO / "samples"
SAMPLE_MODELS = {
    "mobilenet_v2": SAMPLES_DIR / "mobilenet_v2_torchvision.onnx",
    "mobilenet_v3_small": SAMPLES_DIR / "ppocr_mobile_v2_cls_mobilenetv3_small.onnx",
    "pplcnet": SAMPLES_DIR / "pplcnet_x1_0_doc_orientation_rapid.onnx",
}
SAMPLE_MODEL = SAMPLE_MODELS["mobilenet_v2"]
SAMPLE_MODEL_PATHS = sorted(SAMPLE_MODELS.values())
# imagenet_00 .. imagenet_09: the split the accuracy tests were written against (00-04 calibrate, 05-09 evaluate).
IMAGENET_COUNT = 10

_images_dir: Path | None = None


def sample_model(key: str) -> Path:
    """Path of a sample model by key (``mobilenet_v2``, ``mobilenet_v3_small``, ``pplcnet``)."""
    return SAMPLE_MODELS[key]


def foolbox_data_dir() -> Path:
    """foolbox's packaged sample images, located without importing foolbox (its import pulls in eagerpy)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the test dependency foolbox is not installed: pip install -e '.[test]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def imagenet_samples() -> Path:
    """A folder holding exactly imagenet_00 .. imagenet_09 (labelled ImageNet validation images)."""
    global _images_dir
    if _images_dir is None:
        folder = Path(tempfile.mkdtemp(prefix="deprune-test-images-"))
        for source in sorted(foolbox_data_dir().glob("imagenet_*.jpg"))[:IMAGENET_COUNT]:
            shutil.copyfile(source, folder / source.name)
        _images_dir = folder
    return _images_dir
