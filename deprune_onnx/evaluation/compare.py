"""Compare an original and a pruned (or rewritten, or float16) model in ONNX Runtime.

Both models run through Polygraphy's ONNX Runtime runner on the same inputs: ``n`` random normal tensors and,
when a folder is given, up to ``n`` real images. A pruned model that contains DRSparseDepthwiseConv is lowered
first (ONNX Runtime cannot load the TensorRT plugin). Polygraphy's comparator judges the tolerance check and
supplies the error statistics, with the original as the reference:
  elementwise, an output value fails when |pruned - original| > atol AND |pruned - original| / |original| > rtol
  (Polygraphy's ``elemwise`` check; a reference value of exactly 0 makes its relative error huge, by design).
  An output whose original values all lie within atol of 0 (untrained weights, probabilities of many classes)
  would pass that check whatever the pruned model does, so it is judged by its relative L2 error <= rtol instead.
On top we report the relative L2 error and cosine similarity (per sample, then averaged) and, only for outputs
that are class scores (``deprune_onnx.evaluation.output_kind``: [N, K], not a map or a sequence), the top-1
agreement: the fraction of samples whose arg-max class is the same. ``judge="images"`` lets only the image
inputs decide the checks (random noise is no input a deployed model sees; its results are still reported).

Images are preprocessed as ``eval`` does (``deprune_onnx.evaluation.images.preprocessing_for``: the options over
the original's metadata_props, else the pruned model's, else the preset guessed from the input shape), in the
standard view; at most ``n`` of them, and the report notes when the folder held more.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from deprune_onnx.errors import DepruneError
from deprune_onnx.evaluation.metrics import error_metrics
from deprune_onnx.evaluation.output_kind import CLASS_SCORES, DENSE, output_kind
from deprune_onnx.evaluation.runner import lower_custom_ops
from deprune_onnx.op import spec as op_spec

if TYPE_CHECKING:
    from deprune_onnx.evaluation.images import Preset, PreprocessOptions

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-5


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class OutputStats:
    """Error statistics of one output over one set of inputs (all samples together)."""

    output: str
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    rel_l2: float                 # mean over samples of ||pruned - original|| / ||original||
    cosine: float
    kind: str                     # class_scores | sequence | dense (deprune_onnx.evaluation.output_kind)
    top1_agreement: float | None  # class scores only
    within_tolerance: bool
    reference_max_abs: float      # max |original|: at or below atol, the elementwise check cannot fail


@dataclass(frozen=True)
class InputSetResult:
    source: str  # "random" or "images"
    samples: int
    outputs: tuple[OutputStats, ...]


@dataclass
class CompareReport:
    """Everything ``compare`` found; ``failures`` empty means every requested check passed."""

    lowered_ops: int               # DRSparseDepthwiseConv nodes of the pruned model lowered to Conv
    lowered_ops_original: int      # the same for the original model
    rtol: float | None
    atol: float | None
    min_agreement: float | None
    judged: str = "all"            # which input sets the checks judge: "all" or "images"
    sets: list[InputSetResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Concrete shapes of the model's graph inputs (initializers excluded); a dynamic batch axis becomes 1."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if dtype.kind != "f":
            raise DepruneError(f"input '{value.name}' has type {dtype}; compare only feeds float inputs")
        shape = []
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(dim.dim_value)
            elif axis == 0:
                shape.append(1)
            else:
                raise DepruneError(f"input '{value.name}' has a dynamic axis {axis} ('{dim.dim_param}'); "
                                   "compare needs a model with static non-batch input shapes")
        specs.append(InputSpec(value.name, tuple(shape), dtype))
    return specs


def random_feeds(specs: Sequence[InputSpec], n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` feeds of standard normal values (float32; cast per model later): normalised images look alike."""
    rng = np.random.default_rng(seed)
    return [{spec.name: rng.standard_normal(spec.shape, dtype=np.float32) for spec in specs} for _ in range(n)]


def image_feeds(specs: Sequence[InputSpec], sources: Sequence[str | Path], n: int,
                preprocessing: "PreprocessOptions | Preset | str | None" = None,
                *models: "tuple[onnx.ModelProto, str] | None") -> tuple[list[dict[str, np.ndarray]], int]:
    """The first ``n`` images of ``sources`` (sorted by name), one per feed, for a single [N, 3, H, W] input, in
    the standard view of the preprocessing ``eval`` would use (``preprocessing_for``: options over the
    metadata_props of ``models``); and how many images the sources hold (more than ``n``: capped)."""
    from deprune_onnx.evaluation.images import find_images, preprocess as preprocess_image, preprocessing_for

    found = find_images(sources)
    if len(specs) != 1 or len(specs[0].shape) != 4 or specs[0].shape[1] != 3:
        raise DepruneError("--images needs a model with one [N, 3, H, W] input, got "
                           + ", ".join(f"{s.name} {list(s.shape)}" for s in specs))
    spec = specs[0]
    preset = preprocessing_for(preprocessing, spec.shape, *models)
    return [{spec.name: np.repeat(preprocess_image(p, preset), spec.shape[0], axis=0)} for p in found[:n]], len(found)


def _run(model: onnx.ModelProto, name: str, feeds: Sequence[dict[str, np.ndarray]]) -> list[Any]:
    """Polygraphy IterationResults of ``model`` on ``feeds`` (cast to the model's own input dtypes)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import IterationResult

    dtypes = {spec.name: spec.dtype for spec in input_specs(model)}
    if set(dtypes) != set(feeds[0]):
        raise DepruneError(f"{name} model inputs {sorted(dtypes)} differ from the original's {sorted(feeds[0])}")
    results = []
    with OnnxrtRunner(SessionFromOnnx(model.SerializeToString(), providers=["cpu"]), name=name) as runner:
        for feed in feeds:
            outputs = runner.infer({key: value.astype(dtypes[key]) for key, value in feed.items()})
            results.append(IterationResult({k: np.asarray(v) for k, v in outputs.items()}, runner_name=name))
    return results


def _top1_agreement(pruned: list[np.ndarray], original: list[np.ndarray]) -> float | None:
    """Fraction of samples whose arg-max class agrees; None unless the output is class scores."""
    if output_kind(original[0].shape) != CLASS_SCORES:
        return None
    pruned_top = np.concatenate([p.reshape(len(p), -1).argmax(-1) for p in pruned])
    original_top = np.concatenate([o.reshape(len(o), -1).argmax(-1) for o in original])
    return float(np.mean(pruned_top == original_top))


def _compare_set(source: str, original: onnx.ModelProto, pruned: onnx.ModelProto,
                 feeds: Sequence[dict[str, np.ndarray]], rtol: float, atol: float) -> InputSetResult:
    from polygraphy.comparator import Comparator, RunResults
    from polygraphy.comparator import compare as polygraphy_compare
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # the report below replaces Polygraphy's console log
        runs = RunResults([("pruned", _run(pruned, "pruned", feeds)), ("original", _run(original, "original", feeds))])
        missing = set(runs["original"][0]) - set(runs["pruned"][0])
        if missing:
            raise DepruneError(f"pruned model lacks the original's output(s) {', '.join(sorted(missing))}")
        # Polygraphy >= 0.53 names it SimpleCompareFunc and returns a list of AccuracyResults.
        simple = getattr(polygraphy_compare, "SimpleCompareFunc", None) or polygraphy_compare.CompareFunc.simple
        accuracy = Comparator.compare_accuracy(runs, compare_func=simple(rtol=rtol, atol=atol,
                                                                         check_error_stat="elemwise"))
    accuracy = accuracy if hasattr(accuracy, "keys") else accuracy[0]
    per_iteration = accuracy[("pruned", "original")]
    stats = []
    for output in runs["original"][0]:
        results = [iteration[output] for iteration in per_iteration]
        pruned_values = [np.asarray(iteration[output]) for iteration in runs["pruned"]]
        original_values = [np.asarray(iteration[output]) for iteration in runs["original"]]
        errors = error_metrics(np.concatenate([o.reshape(1, -1) for o in original_values]),
                               np.concatenate([p.reshape(1, -1) for p in pruned_values]))
        stats.append(OutputStats(
            output=output,
            max_abs=float(max(r.max_absdiff for r in results)),
            mean_abs=float(np.mean([r.mean_absdiff for r in results])),
            max_rel=float(max(r.max_reldiff for r in results)),
            mean_rel=float(np.mean([r.mean_reldiff for r in results])),
            rel_l2=errors.rel_l2_mean, cosine=errors.cosine_mean,
            kind=output_kind(original_values[0].shape) if original_values[0].ndim else DENSE,
            top1_agreement=_top1_agreement(pruned_values, original_values),
            within_tolerance=all(bool(r) for r in results),
            reference_max_abs=float(max((np.abs(o).max() for o in original_values if o.size), default=0.0))))
    return InputSetResult(source, len(feeds), tuple(stats))


JUDGED_INPUTS = ("all", "images")


def compare_models(original: onnx.ModelProto, pruned: onnx.ModelProto, *, n: int = 16, seed: int = 0,
                   images: Sequence[str | Path] = (), rtol: float | None = None, atol: float | None = None,
                   min_agreement: float | None = None,
                   preprocessing: "PreprocessOptions | Preset | str | None" = None,
                   judge: str = "all") -> CompareReport:
    """Run both models and check them.

    Checks: the tolerance check (rtol/atol; defaults 1e-5/1e-5) unless only ``min_agreement`` is given, and
    the top-1 agreement of every class-score output when ``min_agreement`` is given. ``judge`` "images" lets
    only the image inputs decide (random inputs are still run and reported). Failures are listed in the report,
    not raised: the caller decides (the CLI exits 1).
    """
    if n < 1:
        raise DepruneError(f"--n must be >= 1, got {n}")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise DepruneError(f"--min-agreement must be in [0, 1], got {min_agreement}")
    if judge not in JUDGED_INPUTS:
        raise DepruneError(f"--judge '{judge}': expected one of {', '.join(JUDGED_INPUTS)}")
    if judge == "images" and not images:
        raise DepruneError("--judge images: give the images with --images")
    check_tolerance = not (min_agreement is not None and rtol is None and atol is None)
    rtol = DEFAULT_RTOL if rtol is None else rtol
    atol = DEFAULT_ATOL if atol is None else atol
    lowered = [len(op_spec.custom_nodes(model)) for model in (pruned, original)]
    runnable = lower_custom_ops(pruned, "PRUNED")
    metadata_sources = ((original, "ORIGINAL"), (pruned, "PRUNED"))
    original = lower_custom_ops(original, "ORIGINAL")

    specs = input_specs(original)
    theirs = {spec.name: list(spec.shape) for spec in input_specs(runnable)}
    ours = {spec.name: list(spec.shape) for spec in specs}
    if theirs != ours:  # each model is fed its own dtype, but names and shapes must agree
        raise DepruneError(f"the pruned model's inputs {theirs} differ from the original's {ours}; compare needs "
                           "the same input names and shapes")
    report = CompareReport(lowered[0], lowered[1], rtol if check_tolerance else None,
                           atol if check_tolerance else None, min_agreement, judge)
    feed_sets = [("random", random_feeds(specs, n, seed))]
    if images:
        feeds, found = image_feeds(specs, images, n, preprocessing, *metadata_sources)
        feed_sets.append(("images", feeds))
        if found > n:
            report.notes.append(f"images: the first {n} of {found} (by name) were used; --n caps them")
    for source, feeds in feed_sets:
        result = _compare_set(source, original, runnable, feeds, rtol, atol)
        report.sets.append(result)
        if judge == "images" and source != "images":
            continue
        for stats in result.outputs:
            if check_tolerance and stats.reference_max_abs <= atol:
                # Every value is within atol of any other value of that size: judge the relative L2 error instead.
                report.notes.append(f"{source}/{stats.output}: every original value is within atol "
                                    f"(max |original| {stats.reference_max_abs:.3g} <= {atol:g}), so the "
                                    f"elementwise check cannot fail; judged by relative L2 error <= rtol instead")
                if not stats.rel_l2 <= rtol:
                    report.failures.append(f"{source}/{stats.output}: relative L2 error {stats.rel_l2:.3g} > "
                                           f"rtol={rtol:g} (outputs below atol={atol:g})")
            elif check_tolerance and not stats.within_tolerance:
                report.failures.append(f"{source}/{stats.output}: outside rtol={rtol:g} atol={atol:g} "
                                       f"(max abs {stats.max_abs:.3g}, max rel {stats.max_rel:.3g})")
            if min_agreement is not None and stats.top1_agreement is not None \
                    and stats.top1_agreement < min_agreement:
                report.failures.append(f"{source}/{stats.output}: top-1 agreement {stats.top1_agreement:.3f} "
                                       f"< {min_agreement:g}")
    if min_agreement is not None and all(s.top1_agreement is None for r in report.sets for s in r.outputs):
        kinds = ", ".join(sorted({s.kind for r in report.sets for s in r.outputs}))
        raise DepruneError(f"--min-agreement given, but no output is class scores (outputs: {kinds}); judge maps "
                           "and sequences with --rtol/--atol, or 'eval --max-rel-error'")
    return report


def format_report(report: CompareReport) -> str:
    """A fixed-width table, one row per (input set, output), and the verdict."""
    lines = []
    for which, count in (("original", report.lowered_ops_original), ("pruned", report.lowered_ops)):
        if count:
            lines.append(f"{which} model: {count} DRSparseDepthwiseConv node(s) lowered to Conv for ONNX Runtime")
    header = f"{'inputs':<8} {'n':>3}  {'output':<28} {'max abs':>10} {'mean abs':>10} {'max rel':>10} " \
             f"{'rel L2':>10} {'cosine':>9} {'top-1':>7}"
    lines += [header, "-" * len(header)]
    for result in report.sets:
        for s in result.outputs:
            top1 = "-" if s.top1_agreement is None else f"{s.top1_agreement:.3f}"
            lines.append(f"{result.source:<8} {result.samples:>3}  {s.output[:28]:<28} {s.max_abs:>10.3g} "
                         f"{s.mean_abs:>10.3g} {s.max_rel:>10.3g} {s.rel_l2:>10.3g} {s.cosine:>9.6f} {top1:>7}")
    checks = []
    if report.rtol is not None:
        checks.append(f"rtol={report.rtol:g} atol={report.atol:g}")
    if report.min_agreement is not None:
        checks.append(f"min top-1 agreement={report.min_agreement:g}")
    if report.judged != "all":
        checks.append(f"judged on {report.judged} only")
    verdict = "PASSED" if report.passed else "FAILED"
    lines += [f"note: {note}" for note in report.notes]
    lines.append(f"{verdict} ({', '.join(checks)})")
    lines += [f"  {failure}" for failure in report.failures]
    return "\n".join(lines)
