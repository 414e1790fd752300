"""deprune_onnx.options owns every rule on prune's options: a library caller gets the CLI's checks, errors name
the library parameter, and the CLI renders the same error with its flag names."""
from __future__ import annotations

import pytest

from deprune_onnx.cli.options import FLAG_NAMES
from deprune_onnx.options import (PRESET_NAMES, CalibOptions, DWOptions, OptionError, PruneOptions, PWOptions,
                                  check_prune_options)
from support.cli_testing import assert_one_line_error, run_cli
from support.samples import SAMPLE_MODEL

CALIB = ["images/"]

# (options, plan given, the library message, the CLI message)
CASES = [
    (PruneOptions(dw=DWOptions(dw_ratio=1.0)), False,
     "dw.dw_ratio 1.0: a pruning ratio must be in [0, 1)", "--dw-ratio 1.0: a pruning ratio must be in [0, 1)"),
    (PruneOptions(dw=DWOptions(dw_ratio=float("nan"))), False,
     "dw.dw_ratio nan: a pruning ratio must be in [0, 1)", "--dw-ratio nan: a pruning ratio must be in [0, 1)"),
    (PruneOptions(dw=DWOptions(layer_ratios=[("a{b}", -0.1)])), False,
     "dw.layer_ratios -0.1: a pruning ratio must be in [0, 1)", "--layer-ratio -0.1: a pruning ratio"),
    (PruneOptions(dw=DWOptions(method="xyz")), False,
     "dw.method 'xyz': expected one of dcp, b, bh, channel, global", "--method 'xyz': expected one of"),
    (PruneOptions(dw=DWOptions(tile=0)), False,
     "dw.tile 0: must be a positive number of vectors", "--tile 0: must be a positive number of vectors"),
    (PruneOptions(dw=DWOptions(method="global", layer_ratios=[("*", 0.3)])), False,
     "dw.layer_ratios: not available with dw.method global", "--layer-ratio: not available with --method global"),
    (PruneOptions(pw=PWOptions(ratio=1.5)), False,
     "pw.ratio 1.5: a pruning ratio must be in [0, 1)", "--pw-ratio 1.5: a pruning ratio must be in [0, 1)"),
    (PruneOptions(pw=PWOptions(method="l1")), False, "pw.method 'l1': expected one of l2, nm24", "--pw-method 'l1'"),
    (PruneOptions(pw=PWOptions(scope="some")), False, "pw.scope 'some': expected one of project, all",
     "--pw-scope 'some'"),
    # without --pw-ratio too: before, --pw-align 0 passed silently when no PW channel was to be removed
    (PruneOptions(pw=PWOptions(align=0)), False, "pw.align 0: must be a positive integer", "--pw-align 0: must be"),
    (PruneOptions(output_format="tensorrt"), False, "output_format 'tensorrt': expected one of plugin, dense",
     "--format 'tensorrt'"),
    (PruneOptions(dtype="int8"), False, "dtype 'int8': expected one of float32, float16", "--dtype 'int8'"),
    (PruneOptions(keep_zeros=True), True, "keep_zeros and plan: choose one source of masks",
     "--keep-zeros and --plan: choose one source of masks"),
    (PruneOptions(calib=CalibOptions(sources=[], allocate="kl")), False,
     "calib.allocate: needs calibration images, give calib.sources DIR",
     "--allocate: needs calibration images, give --calib DIR"),
    (PruneOptions(calib=CalibOptions(sources=[], saliency=True)), False,
     "calib.n/calib.crops/calib.saliency: need calib.sources DIR",
     "--calib-n/--calib-crops/--calib-saliency: need --calib DIR"),
    (PruneOptions(calib=CalibOptions(sources=CALIB, n=0)), False, "calib.n 0: must be at least 1",
     "--calib-n 0: must be at least 1"),
    (PruneOptions(calib=CalibOptions(sources=CALIB, preprocess="cifar")), False,
     "calib.preprocess 'cifar': expected one of " + ", ".join(PRESET_NAMES), "--calib-preprocess 'cifar'"),
    (PruneOptions(calib=CalibOptions(sources=CALIB, allocate_samples=0)), False,
     "calib.allocate_samples 0: must be at least 1", "--allocate-samples 0: must be at least 1"),
    (PruneOptions(calib=CalibOptions(sources=CALIB, allocate="entropy")), False,
     "calib.allocate 'entropy': expected one of kl", "--allocate 'entropy'"),
    (PruneOptions(calib=CalibOptions(sources=CALIB, allocate="kl", allocate_ratios=(0.5, 1.0))), False,
     "calib.allocate_ratios [0.5, 1.0]: every measured ratio must be in (0, 1)", "--allocate-ratios [0.5, 1.0]"),
    (PruneOptions(calib=CalibOptions(sources=CALIB, allocate="kl")), True,
     "calib.allocate: cannot be combined with plan", "--allocate: cannot be combined with --plan"),
    (PruneOptions(dw=DWOptions(method="global"), calib=CalibOptions(sources=CALIB, allocate="kl")), False,
     "calib.allocate: not available with dw.method global", "--allocate: not available with --method global"),
    (PruneOptions(dw=DWOptions(layer_ratios=[("x", 0.2)]), calib=CalibOptions(sources=CALIB, allocate="kl")), False,
     "calib.allocate: chooses every layer's ratio itself; drop dw.layer_ratios (use dw.exclude",
     "--allocate: chooses every layer's ratio itself; drop --layer-ratio (use --exclude"),
    (PruneOptions(calib=CalibOptions(sources=[], project=True)), False,
     "calib.project: needs calibration images, give calib.sources DIR",
     "--calib-project: needs calibration images, give --calib DIR"),
    (PruneOptions(calib=CalibOptions(sources=CALIB, project=True, refit=False)), False,
     "calib.project: refits each projection right after its DW layer's refit, so it needs calib.refit",
     "--calib-project: refits each projection right after its DW layer's refit, so it needs --refit"),
    (PruneOptions(dw=DWOptions(layer_timings=object())), False,
     "dw.layer_timings: measured layer times (a tune file) only feed dw.target_speedup",
     "--hsr-timings: measured layer times (a tune file) only feed --target-speedup"),
]


@pytest.mark.parametrize("options, plan_given, library, cli", CASES, ids=[case[2][:40] for case in CASES])
def test_every_rule_names_the_parameter(options, plan_given, library, cli) -> None:
    with pytest.raises(OptionError) as error:
        check_prune_options(options, plan_given=plan_given)
    assert str(error.value).startswith(library)
    assert error.value.render(FLAG_NAMES).startswith(cli)
    assert all(param in FLAG_NAMES for param in error.value.params), error.value.params


def test_valid_options_pass() -> None:
    check_prune_options(PruneOptions())
    check_prune_options(PruneOptions(dw=DWOptions(method="b", dw_ratio=0.0, exclude=["*"]),
                                     pw=PWOptions(ratio=0.5, scope="all"), output_format="dense", dtype="float16",
                                     calib=CalibOptions(sources=CALIB, allocate="kl", n=3)))
    check_prune_options(PruneOptions(dw=DWOptions(layer_ratios=[("*", 0.9)]), keep_zeros=True))
    check_prune_options(PruneOptions(calib=CalibOptions(sources=CALIB)), plan_given=True)


def test_braces_in_values_stay_literal() -> None:
    with pytest.raises(OptionError) as error:
        check_prune_options(PruneOptions(dw=DWOptions(method="{dw.tile}")))
    assert str(error.value).startswith("dw.method '{dw.tile}': expected")
    assert error.value.render(FLAG_NAMES).startswith("--method '{dw.tile}': expected")
    assert error.value.params == ("dw.method",)


def test_prune_model_applies_the_rules_before_touching_the_model() -> None:
    """A library caller gets the check from prune_model itself (the model argument is never read)."""
    from deprune_onnx.pipeline import prune_model

    with pytest.raises(OptionError, match=r"^output_format 'x'"):
        prune_model(None, PruneOptions(output_format="x"))  # type: ignore[arg-type]


def test_cli_renders_library_errors_with_flag_names(tmp_path) -> None:
    """A rule met only at planning time (a glob matching no layer) still reaches the user as a flag name."""
    result = run_cli("prune", SAMPLE_MODEL, tmp_path / "out.onnx", "--layer-ratio", "nothing*=0.5")
    assert_one_line_error(result, "--layer-ratio 'nothing*': matches no DW layer")
    assert not (tmp_path / "out.onnx").exists()
    result = run_cli("prune", SAMPLE_MODEL, tmp_path / "out.onnx", "--allocate", "kl")
    assert_one_line_error(result, "--allocate: needs calibration images, give --calib DIR")


@pytest.mark.parametrize("args, message", [
    (["--target-speedup", "1.5", "--dw-ratio", "0.3"], "--dw-ratio and --target-speedup: give one"),
    (["--method", "b", "--hsr-rank", "damage"], "--hsr-rank: only --method bh has an HSR step"),
    (["--calib-damp", "auto"], "--calib-damp: acts only with calibration images"),
    (["--no-refit"], "--refit/--no-refit: acts only with calibration images"),
    (["--allocate-ratios", "0.3"], "--allocate-ratios: acts only with calibration images"),
])
def test_options_the_combination_would_ignore_are_refused(tmp_path, args, message) -> None:
    """Before: exit 0 with the option silently ignored (a new user's trial, 2026-11-30)."""
    result = run_cli("prune", SAMPLE_MODEL, tmp_path / "out.onnx", *args)
    assert_one_line_error(result, message)
    assert not (tmp_path / "out.onnx").exists()
