"""Preprocessing of every image command: presets, --mean/--std/--scale/--channel-order/--resize/--crop, and the
model's metadata_props (issue #12 item 2).

The models here are the torchvision MobileNetV2 sample behind a few prepended nodes that turn another family's
input convention into torchvision's normalisation. Fed its own convention, such a model computes exactly what
the original computes on torchvision-preprocessed images, so the right preprocessing reproduces the original's
top-1 and logits, and ImageNet's (the default) does not.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from PIL import Image

from support.cli_testing import assert_one_line_error, run_cli
from support.samples import imagenet_samples, sample_model
from deprune_onnx.errors import DepruneError
from deprune_onnx.evaluation.images import (PRESETS, PreprocessOptions, metadata_options, preprocess,
                                            resolve_preprocessing)

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def wrapped_mobilenet(scale: np.ndarray, offset: np.ndarray, bgr: bool = False,
                      metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """MobileNetV2 whose input y relates to the raw 0..255 pixels x by x = scale * y + offset (per channel, in
    the model's channel order): prepended nodes map y to torchvision's (x/255 - mean)/std (RGB)."""
    model = onnx.load(str(sample_model("mobilenet_v2")))
    graph = model.graph
    name = graph.input[0].name
    if bgr:  # the model's channel c holds RGB channel 2 - c
        scale, offset = scale[::-1], offset[::-1]
    # z_rgb = y * scale / 255 / std + (offset / 255 - mean) / std, computed in the model's order, then reordered
    mean, std = (MEAN[::-1], STD[::-1]) if bgr else (MEAN, STD)
    mul = (scale / 255 / std).astype(np.float32).reshape(1, 3, 1, 1)
    add = ((offset / 255 - mean) / std).astype(np.float32).reshape(1, 3, 1, 1)
    nodes = [helper.make_node("Mul", ["pixels", "pre_mul"], ["pre_scaled"], name="pre_mul"),
             helper.make_node("Add", ["pre_scaled", "pre_add"], ["pre_rgb" if bgr else name], name="pre_add")]
    initializers = [numpy_helper.from_array(mul, "pre_mul"), numpy_helper.from_array(add, "pre_add")]
    if bgr:
        nodes.append(helper.make_node("Gather", ["pre_rgb", "pre_order"], [name], name="pre_order", axis=1))
        initializers.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "pre_order"))
    graph.input[0].name = "pixels"
    for node in reversed(nodes):
        graph.node.insert(0, node)
    graph.initializer.extend(initializers)
    del model.metadata_props[:]
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


EFFICIENTNET_LITE = (np.full(3, 128.0), np.full(3, 127.0))      # x = 128 y + 127: y = (x - 127) / 128
KERAS_MOBILENET = (np.full(3, 127.5), np.full(3, 127.5))        # x = 127.5 (y + 1): y = x / 127.5 - 1


def _eval(model: Path, *args: object) -> dict:
    result = run_cli("eval", model, "--images", imagenet_samples(), "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def original_top1() -> float:
    return _eval(sample_model("mobilenet_v2"))["labels"]["top1"]


@pytest.mark.model
@pytest.mark.parametrize("convention,args", [
    (EFFICIENTNET_LITE, ["--preprocess", "efficientnet-lite"]),
    (EFFICIENTNET_LITE, ["--mean", "127", "--std", "128", "--scale", "255"]),
    (EFFICIENTNET_LITE, ["--mean", "0.498039", "--std", "0.501961"]),         # the same on the 0..1 scale
    (KERAS_MOBILENET, ["--preprocess", "keras-mobilenet"]),
    (KERAS_MOBILENET, ["--mean", "127.5", "--std", "127.5", "--scale", "255"]),
])
def test_eval_with_the_models_own_preprocessing_matches_the_original(tmp_path: Path, original_top1: float,
                                                                     convention, args) -> None:
    path = tmp_path / "wrapped.onnx"
    onnx.save(wrapped_mobilenet(*convention), str(path))
    right = _eval(path, *args)
    assert right["labels"]["top1"] == original_top1 == pytest.approx(0.9)
    wrong = _eval(path)                                   # ImageNet normalisation, guessed from the shape
    assert wrong["preprocess"] == "imagenet"
    assert wrong["labels"]["top1"] < original_top1


@pytest.mark.model
def test_right_preprocessing_reproduces_the_original_logits(tmp_path: Path) -> None:
    """Logits, not just top-1: the wrapped model on its own preprocessing vs the original on ImageNet's."""
    from deprune_onnx.evaluation.runner import ModelRunner

    paths = sorted(imagenet_samples().glob("*.jpg"))[:3]
    original = ModelRunner(onnx.load(str(sample_model("mobilenet_v2"))))
    wrapped = ModelRunner(wrapped_mobilenet(*EFFICIENTNET_LITE))
    shape = (1, 3, 224, 224)
    own = np.concatenate([preprocess(p, resolve_preprocessing("efficientnet-lite", shape)) for p in paths])
    imagenet = np.concatenate([preprocess(p, resolve_preprocessing("imagenet", shape)) for p in paths])
    np.testing.assert_allclose(wrapped.run(own), original.run(imagenet), atol=2e-3)
    assert np.abs(wrapped.run(imagenet) - original.run(imagenet)).max() > 1.0


@pytest.mark.model
@pytest.mark.parametrize("convention,bgr,metadata", [
    (EFFICIENTNET_LITE, False, {"deprune.preprocess.preset": "efficientnet-lite"}),
    (EFFICIENTNET_LITE, False, {"deprune.preprocess.mean": "127,127,127", "deprune.preprocess.std": "128",
                                "deprune.preprocess.scale": "255"}),
    (KERAS_MOBILENET, False, {"Image.NominalPixelRange": "Normalized_1_1"}),
    (KERAS_MOBILENET, True, {"Image.NominalPixelRange": "Normalized_1_1", "Image.BitmapPixelFormat": "Bgr8"}),
    (KERAS_MOBILENET, True, {"deprune.preprocess.preset": "keras-mobilenet",
                             "deprune.preprocess.channel_order": "BGR"}),
])
def test_eval_reads_preprocessing_from_metadata_props(tmp_path: Path, original_top1: float, convention, bgr,
                                                     metadata) -> None:
    path = tmp_path / "with_metadata.onnx"
    onnx.save(wrapped_mobilenet(*convention, bgr=bgr, metadata=metadata), str(path))
    data = _eval(path)
    assert data["labels"]["top1"] == original_top1
    assert data["preprocessing"]["source"] == "model metadata"
    assert data["preprocessing"]["channel_order"] == ("BGR" if bgr else "RGB")
    # an explicit --preprocess ignores the metadata
    assert _eval(path, "--preprocess", "imagenet")["labels"]["top1"] < original_top1


@pytest.mark.model
def test_prune_calib_uses_the_metadata_preprocessing(tmp_path: Path) -> None:
    source = tmp_path / "lite.onnx"
    onnx.save(wrapped_mobilenet(*EFFICIENTNET_LITE, metadata={"deprune.preprocess.preset": "efficientnet-lite"}),
              str(source))
    from deprune_onnx.recovery.calibration import CalibOptions, calibration_set

    model = onnx.load(str(source))
    samples = calibration_set(model, CalibOptions(sources=[str(imagenet_samples())], n=2, crops=1))
    assert samples.preset == "efficientnet-lite"
    expected = preprocess(sorted(imagenet_samples().glob("*.jpg"))[0], PRESETS["efficientnet-lite"])
    np.testing.assert_array_equal(samples.inputs[:1], expected)
    cli = CalibOptions(sources=[str(imagenet_samples())], n=1, crops=1,
                       preprocess=PreprocessOptions(mean=(127.0,) * 3, std=(128.0,) * 3, scale=255.0))
    assert calibration_set(onnx.load(str(sample_model("mobilenet_v2"))), cli).preset == "imagenet+mean,std,scale"


def test_options_resolve_on_the_stated_scale(tmp_path: Path) -> None:
    shape = (1, 3, 224, 224)
    lite = resolve_preprocessing(PreprocessOptions(mean=(127.0,) * 3, std=(128.0,) * 3, scale=255.0), shape)
    np.testing.assert_allclose(lite.mean, PRESETS["efficientnet-lite"].mean)
    np.testing.assert_allclose(lite.std, PRESETS["efficientnet-lite"].std)
    path = tmp_path / "ramp_1.png"
    Image.fromarray(np.tile(np.arange(0, 250, 2, dtype=np.uint8)[None, :, None], (300, 1, 3))).save(path)
    exact = preprocess(path, resolve_preprocessing(PreprocessOptions(preset="efficientnet-lite", crop="none"),
                                                   shape))[0]
    pixels = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR), np.float32)
    np.testing.assert_allclose(exact, ((pixels - 127) / 128).transpose(2, 0, 1), atol=1e-5)
    short = resolve_preprocessing(PreprocessOptions(resize="320"), shape)
    assert short.resize == 320 and short.crop == "center"
    resized = preprocess(path, short)[0]          # 125 wide, 300 high: width -> 320, height 768, centre 224 x 224
    pixels = np.asarray(Image.open(path).convert("RGB").resize((320, 768), Image.BILINEAR), np.float32)
    window = pixels[272:496, 48:272] / 255
    np.testing.assert_allclose(resized, ((window - MEAN) / STD).transpose(2, 0, 1), atol=1e-4)
    bgr = resolve_preprocessing(PreprocessOptions(channel_order="BGR"), shape)
    np.testing.assert_array_equal(preprocess(path, bgr)[0], preprocess(path, PRESETS["pplcnet"])[0])
    assert bgr.bgr and bgr.name == "imagenet+channel_order"


@pytest.mark.parametrize("options,message", [
    (PreprocessOptions(mean=(127.0,) * 3), "0..1 scale"),
    (PreprocessOptions(resize="200"), "smaller than the model's input"),
    (PreprocessOptions(resize="256", crop="none"), "drop --resize"),
    (PreprocessOptions(scale=255.0), "give them too"),
    (PreprocessOptions(preset="ppocr-cls", resize="256"), "do not apply"),
])
def test_inconsistent_options_are_refused(options: PreprocessOptions, message: str) -> None:
    with pytest.raises(DepruneError, match=message):
        resolve_preprocessing(options, (1, 3, 224, 224))


def test_metadata_keys_are_checked() -> None:
    model = helper.make_model(helper.make_graph([], "g", [], []))
    assert metadata_options(model) is None
    model.metadata_props.add(key="character", value="0\n90\n180\n270")   # PP-LCNet's labels: not preprocessing
    assert metadata_options(model) is None
    model.metadata_props.add(key="Image.BitmapPixelFormat", value="Gray8")
    with pytest.raises(DepruneError, match="Image.BitmapPixelFormat"):
        metadata_options(model, "m.onnx")
    del model.metadata_props[1:]
    model.metadata_props.add(key="deprune.preprocess.colour", value="RGB")
    with pytest.raises(DepruneError, match="unknown key"):
        metadata_options(model, "m.onnx")


def test_every_image_command_has_the_same_preprocessing_options() -> None:
    names = ["--preprocess", "--mean", "--std", "--scale", "--channel-order", "--resize", "--crop"]
    for command in ("eval", "compare", "sweep", "finetune"):
        text = run_cli(command, "--help").output
        assert all(name in text for name in names), command
    prune = run_cli("prune", "--help").output
    assert all(name.replace("--", "--calib-") in prune for name in names)


def test_malformed_values_are_one_line_errors(tmp_path: Path) -> None:
    model = sample_model("mobilenet_v2")
    assert_one_line_error(run_cli("eval", model, "--images", imagenet_samples(), "--mean", "1,2"), "--mean '1,2'")
    assert_one_line_error(run_cli("eval", model, "--images", imagenet_samples(), "--resize", "big"),
                          "--resize 'big'")
    assert_one_line_error(run_cli("prune", model, tmp_path / "out.onnx", "--calib-mean", "0.5"),
                          "need --calib DIR")


@pytest.mark.model
def test_prune_calib_takes_the_same_options_with_the_calib_prefix(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    result = run_cli("prune", sample_model("mobilenet_v2"), out, "--dw-ratio", "0.3", "--format", "dense", "--calib",
                     imagenet_samples(), "--calib-n", "1", "--calib-crops", "1", "--calib-mean", "127",
                     "--calib-std", "128", "--calib-scale", "255", "--calib-channel-order", "BGR", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["calibration"]["preprocess"] == "imagenet+mean,std,scale,channel_order"
