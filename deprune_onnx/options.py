"""Every option of ``prune``: the option types, their allowed values, and every rule that combines them.

The Click commands only map flags to these types (cli/prune_cmd.py, cli/sweep_cmd.py), so a library caller of
``prune_model`` gets exactly the checks the CLI user gets. An error names the parameter the library way
(``dw.dw_ratio 1.5: a pruning ratio must be in [0, 1)``); the CLI renders the same error with its flag names
(``--dw-ratio 1.5: ...``) through :meth:`OptionError.render`.

Nothing here reads a model: rules that need the model (a ``--layer-ratio`` glob matching no layer, measured
timings of a layer that does not exist) stay with the step that has it (dw/planner.py).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from deprune_onnx.errors import DepruneError
from deprune_onnx.op.spec import K_TILE

if TYPE_CHECKING:
    from deprune_onnx.evaluation.images import Preset, PreprocessOptions
    from deprune_onnx.plan import PruningPlan

# DW mask methods: the paper's three (dcp = DEPrune, b = DEPrune-B, bh = DEPrune-BH) and two baselines at equal
# ratio (channel: whole DW channels by l2 norm; global: one magnitude ranking across all DW layers).
DW_METHODS = ("dcp", "b", "bh", "channel", "global")
# PW pruning: l2 filter pruning that removes channels, or 2:4 masks for TensorRT's sparse tensor cores.
PW_METHODS = ("l2", "nm24")
# project = the projection PW of each block (the paper); all = every PW, expansion too.
PW_SCOPES = ("project", "all")
# plugin = DRSparseDepthwiseConv custom op; dense = standard Conv with masked weights.
OUTPUT_FORMATS = ("plugin", "dense", "auto")  # auto: the custom op only where measured faster (trt/layer_choice)
DTYPES = ("float32", "float16")
# Image preprocessing presets; the presets themselves live in evaluation/images.py (a test checks the names).
PRESET_NAMES = ("imagenet", "pplcnet", "efficientnet-lite", "keras-mobilenet", "ppocr-cls")
# Per-layer ratio allocation from measured sensitivity.
ALLOCATORS = ("kl",)
# How HSR picks over-/under-aligned layers: the paper's beta = alpha / eps, or speed gained per unit of expected
# damage; auto = damage when it is measured (calibration images given), beta otherwise (docs/accuracy.md).
HSR_RANKS = ("auto", "beta", "damage")
# --allocate measures sensitivity on at most this many of the calibration samples (evenly spaced).
DEFAULT_ALLOCATE_SAMPLES = 16
DEFAULT_ALLOCATE_RATIOS = (0.25, 0.5, 0.75, 0.9)

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z0-9_.\-]+)\}")


class OptionError(DepruneError):
    """A bad option value or a bad combination of options.

    ``template`` names parameters as ``{dw.dw_ratio}`` placeholders (values are inserted with :func:`literal`,
    so braces in a layer name stay braces). ``str(error)`` names them the library way (``dw.dw_ratio``);
    ``render(flags)`` with a mapping such as ``{"dw.dw_ratio": "--dw-ratio"}`` gives a front end's names.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.render())

    @property
    def params(self) -> tuple[str, ...]:
        """The parameters the error names, in order."""
        return tuple(m.group(1) for m in _PLACEHOLDER.finditer(self.template) if m.group(1))

    def render(self, names: Mapping[str, str] | None = None) -> str:
        names = names or {}

        def substitute(match: re.Match[str]) -> str:
            if match.group(1) is None:
                return match.group(0)[0]
            return names.get(match.group(1), match.group(1))

        return _PLACEHOLDER.sub(substitute, self.template)


def literal(value: Any) -> str:
    """``value`` as text safe inside an OptionError template."""
    return str(value).replace("{", "{{").replace("}", "}}")


@dataclass
class DWOptions:
    """How to decide the depthwise (DW) masks.

    Fields:
        method: one of DW_METHODS (default ``bh``, DEPrune-BH).
        dw_ratio: target pruning ratio (PR) of every DW layer, fraction of weights pruned, in [0, 1).
        layer_ratios: ``(name or glob, ratio)`` pairs overriding ``dw_ratio``; the last match wins; ratios in
            [0, 1); not with ``global`` (its ranking sets every ratio). A glob matching no layer is an error
            at planning time.
        exclude: globs of DW layers left dense.
        tile: GPU tile T along K, in vectors (>= 1), that HSR aligns each sub-GEMM's kept count to.
        hsr_alphas: measured HSR speedup alpha per layer name (replaces the tile cost model for that layer).
        hsr_rank: one of HSR_RANKS (default ``auto``: ``damage`` with calibration images, else ``beta``).
        target_speedup: predicted speedup (finite, >= 1) to reach instead of ``dw_ratio``, of the DW layers, or
            of the DSConv blocks (DW + PW time) when PW channels are removed (dw/speed.py); None = use
            ``dw_ratio``.
        layer_timings: a ``trt.layer_choice.Timings`` (a ``deprune-onnx tune`` file given as --hsr-timings):
            measured per-layer times that ``target_speedup`` predicts with instead of the tile cost model;
            None = not measured.

    Errors: :class:`OptionError` from :func:`check_dw_options`.
    """

    method: str = "bh"
    dw_ratio: float = 0.5
    layer_ratios: list[tuple[str, float]] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    tile: int = K_TILE
    hsr_alphas: dict[str, float] = field(default_factory=dict)
    hsr_rank: str = "auto"
    target_speedup: float | None = None
    layer_timings: Any = None


@dataclass
class PWOptions:
    """How to prune the pointwise (PW) convs.

    Fields:
        ratio: l2 filter-pruning ratio in [0, 1) (fraction of a group's channels removed); 0 = no removal.
        align: kept channel counts are multiples of this (>= 1; the GPU tile, 8 for small models).
        scope: one of PW_SCOPES.
        method: one of PW_METHODS; ``nm24`` writes 2:4 masks and removes nothing (``ratio`` is not used).

    Errors: :class:`OptionError` from :func:`check_pw_options`.
    """

    ratio: float = 0.0
    align: int = 32
    scope: str = "project"
    method: str = "l2"


@dataclass
class CalibOptions:
    """Calibration images and what to do with them: the refit and/or the per-layer ratio allocation.

    Fields:
        sources: image folders, files or globs (non-empty).
        n: use only the first N images, sorted by name (>= 1); None = all.
        preprocess: the preprocessing of the calibration images: a ``PreprocessOptions`` (``--calib-preprocess``,
            ``--calib-mean``, ...), a resolved ``Preset`` or one of PRESET_NAMES; None = the model's
            metadata_props, else guessed from its input shape (``evaluation.images.resolve_preprocessing``).
        crops: views (crops, flips) per image; None or 0 = enough for 64 samples, at most 10 per image.
        damp: ridge damping of the refit, relative to each channel's mean input energy (finite, >= 0); None =
            chosen per layer by cross-validation over the calibration images (``--calib-damp auto``).
        saliency: choose kept taps by second-order saliency instead of |w| (same K per sub-GEMM).
        refit: refit the kept DW weights and biases by least squares (False: images used for ``allocate`` only).
        project: also refit the projection PW of every block whose DW layer was pruned, right after that layer
            (recovery/pw_refit.py ``ProjectionRefit``); None (the default) = whenever ``refit``, True = required
            (an error without ``refit``), False = never. On by default because it lowered the KL of every
            measured row on the choice images (docs/accuracy.md).
        allocate: one of ALLOCATORS, or None: sensitivity-aware per-layer ratios meeting ``DWOptions.dw_ratio``.
        allocate_ratios: ratios in [0, 1) at which ``allocate`` measures each layer.
        allocate_samples: calibration samples ``allocate`` measures on (>= 1, evenly spaced).

    Errors: :class:`OptionError` from :func:`check_calib_options`.
    """

    sources: list[str]
    n: int | None = None
    preprocess: "PreprocessOptions | Preset | str | None" = None
    crops: int | None = None
    damp: float | None = 0.01
    saliency: bool = False
    refit: bool = True
    project: bool | None = None
    allocate: str | None = None
    allocate_ratios: tuple[float, ...] = DEFAULT_ALLOCATE_RATIOS
    allocate_samples: int = DEFAULT_ALLOCATE_SAMPLES

    @property
    def refits_projections(self) -> bool:
        """Whether the projections are refit: ``project``, or by default whenever the DW layers are."""
        return self.refit if self.project is None else self.project

    @property
    def measure_damp(self) -> float:
        """Damping of the refit inside sensitivity measurements (one layer alone, on its unpruned input): the
        fixed ``damp``, or the default 0.01 when the final refit cross-validates it."""
        return 0.01 if self.damp is None else self.damp


@dataclass
class PruneOptions:
    """Everything ``prune_model`` needs besides the model (and, optionally, a saved plan).

    Fields:
        dw: DW mask options.
        pw: PW pruning options.
        output_format: one of OUTPUT_FORMATS.
        dtype: one of DTYPES; float16 converts weights, activations and I/O.
        calib: calibration (refit, allocation); None = none.
        keep_zeros: the masks are the input's DW zero pattern, checked against ``dw.method``'s rules and aligned
            (bh); ratio options are not used; not with a plan.
        timings: trt.layer_choice.Timings (a `deprune-onnx tune` file): required by, and only read with,
            output_format "auto".

    Errors: :class:`OptionError` from :func:`check_prune_options`.
    """

    dw: DWOptions = field(default_factory=DWOptions)
    pw: PWOptions = field(default_factory=PWOptions)
    output_format: str = "plugin"
    dtype: str = "float32"
    calib: CalibOptions | None = None
    keep_zeros: bool = False
    timings: Any = None


def check_choice(value: Any, choices: tuple[str, ...], param: str) -> None:
    if value not in choices:
        raise OptionError(f"{{{param}}} '{literal(value)}': expected one of {', '.join(choices)}")


def check_ratio(value: float, param: str) -> float:
    """``value`` if it is a pruning ratio in [0, 1) (NaN is not), else OptionError naming ``param``."""
    if not 0.0 <= value < 1.0:
        raise OptionError(f"{{{param}}} {literal(value)}: a pruning ratio must be in [0, 1)")
    return value


def check_tile(tile: int, param: str = "dw.tile") -> None:
    if tile < 1:
        raise OptionError(f"{{{param}}} {tile}: must be a positive number of vectors")


def check_dw_options(dw: DWOptions) -> None:
    """Method, ratio ranges and tile of ``dw``; layer ratios not with ``global``."""
    check_choice(dw.method, DW_METHODS, "dw.method")
    check_ratio(dw.dw_ratio, "dw.dw_ratio")
    for _, ratio in dw.layer_ratios:
        check_ratio(ratio, "dw.layer_ratios")
    if dw.method == "global" and dw.layer_ratios:
        raise OptionError("{dw.layer_ratios}: not available with {dw.method} global (one ranking across all DW "
                          "layers decides every layer's ratio); use {dw.exclude} to leave layers out")
    check_tile(dw.tile)
    check_choice(dw.hsr_rank, HSR_RANKS, "dw.hsr_rank")
    if dw.target_speedup is not None and not 1.0 <= dw.target_speedup < float("inf"):
        raise OptionError(f"{{dw.target_speedup}} {literal(dw.target_speedup)}: must be a finite number >= 1")
    if dw.layer_timings is not None and dw.target_speedup is None:
        raise OptionError("{dw.layer_timings}: measured layer times (a tune file) only feed {dw.target_speedup}; "
                          "give it, or pass an alpha file for the HSR rank")


def check_pw_options(pw: PWOptions) -> None:
    check_choice(pw.method, PW_METHODS, "pw.method")
    check_choice(pw.scope, PW_SCOPES, "pw.scope")
    check_ratio(pw.ratio, "pw.ratio")
    if pw.align < 1:  # checked with or without a ratio: a bad value is a typo either way
        raise OptionError(f"{{pw.align}} {pw.align}: must be a positive integer (32 or 8 for GPU tiles)")


def check_calib_options(calib: CalibOptions, dw: DWOptions, plan_given: bool) -> None:
    """The calibration options alone, and with the DW options and a saved plan."""
    if not calib.sources:
        if calib.allocate:
            raise OptionError("{calib.allocate}: needs calibration images, give {calib.sources} DIR")
        if calib.saliency or calib.n is not None or calib.crops is not None:
            raise OptionError("{calib.n}/{calib.crops}/{calib.saliency}: need {calib.sources} DIR")
        if calib.project:
            raise OptionError("{calib.project}: needs calibration images, give {calib.sources} DIR")
        if calib.preprocess is not None:
            raise OptionError("{calib.preprocess} and its fields: need {calib.sources} DIR")
        raise OptionError("{calib.sources}: no calibration images given")
    if calib.n is not None and calib.n < 1:
        raise OptionError(f"{{calib.n}} {calib.n}: must be at least 1")
    if calib.damp is not None and not 0.0 <= calib.damp < float("inf"):
        raise OptionError(f"{{calib.damp}} {literal(calib.damp)}: must be a finite number >= 0 (or auto)")
    # a preset name, or PreprocessOptions.preset (a resolved Preset was checked when it was resolved)
    preset = calib.preprocess if isinstance(calib.preprocess, str) else getattr(calib.preprocess, "preset", None)
    if preset is not None:
        check_choice(preset, PRESET_NAMES, "calib.preprocess")
    if calib.project and not calib.refit:  # asked for explicitly (None follows refit)
        raise OptionError("{calib.project}: refits each projection right after its DW layer's refit, so it needs "
                          "{calib.refit}")
    if calib.allocate_samples < 1:
        raise OptionError(f"{{calib.allocate_samples}} {calib.allocate_samples}: must be at least 1")
    if calib.allocate is None:
        return
    check_choice(calib.allocate, ALLOCATORS, "calib.allocate")
    if not calib.allocate_ratios or any(not 0.0 < r < 1.0 for r in calib.allocate_ratios):
        raise OptionError(f"{{calib.allocate_ratios}} {list(calib.allocate_ratios)}: every measured ratio must be "
                          "in (0, 1)")
    if plan_given:
        raise OptionError("{calib.allocate}: cannot be combined with {plan} (the plan already fixes every ratio)")
    if dw.method == "global":
        raise OptionError("{calib.allocate}: not available with {dw.method} global (that ranking sets every ratio)")
    if dw.layer_ratios:
        raise OptionError("{calib.allocate}: chooses every layer's ratio itself; drop {dw.layer_ratios} (use "
                          "{dw.exclude} to keep layers dense)")


def check_prune_options(options: PruneOptions, plan_given: bool = False) -> None:
    """Every rule on ``options`` (and on combining them with a saved plan); raises the first OptionError.

    Called by ``prune_model``, and by the CLI before it loads a possibly large model.
    """
    check_dw_options(options.dw)
    check_pw_options(options.pw)
    check_choice(options.output_format, OUTPUT_FORMATS, "output_format")
    check_choice(options.dtype, DTYPES, "dtype")
    if options.keep_zeros and plan_given:
        raise OptionError("{keep_zeros} and {plan}: choose one source of masks")
    if (options.output_format == "auto") != (options.timings is not None):
        raise OptionError("{output_format} auto and {timings} go together: auto decides from a timings file "
                          "written by `deprune-onnx tune` on the GPU")
    if options.calib is not None:
        check_calib_options(options.calib, options.dw, plan_given)


def options_for_plan(options: PruneOptions, plan: PruningPlan) -> PruneOptions:
    """The options a saved plan is re-applied with: the plan brings its own PW options (nm24 is re-applied,
    not recorded as groups); DW options are not used (the plan fixes every mask)."""
    return replace(options, pw=plan.settings.pw)
