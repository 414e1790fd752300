"""Compare an original and a pruned (or rewritten, or float16) model in ONNX Runtime.

Both models run through Polygraphy's ONNX Runtime runner on the same inputs: ``n`` random normal tensors and,
when a folder is given, up to ``n`` real images. A pruned model that contains DRSparseDepthwiseConv is lowered
first (ONNX Runtime cannot load the TensorRT plugin). Polygraphy's comparator judges the tolerance check and
supplies the error statistics, with the original as the reference:
  elementwise, an output value fails when |pruned - original| > atol AND |pruned - original| / |original| > rtol
  (Polygraphy's ``elemwise`` check; a reference value of exactly 0 makes its relative error huge, by design).
On top we report the cosine similarity (per sample, then averaged) and, for outputs shaped like class scores
([..., K] with K > 1), the top-1 agreement: the fraction of samples whose arg-max class is the same.

Images are preprocessed by the presets of ``deprune_onnx.evaluation.images`` (the standard view, fitted to the
model's H x W), guessed from the input shape unless named; ``mean``/``std`` replace the preset's own.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deprune_onnx.errors import DepruneError
from deprune_onnx.op import spec as op_spec
from deprune_onnx.op.lower import lower

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
    cosine: float
    top1_agreement: float | None  # None when the output is not shaped like class scores
    within_tolerance: bool


@dataclass(frozen=True)
class InputSetResult:
    source: str  # "random" or "images"
    samples: int
    outputs: tuple[OutputStats, ...]


@dataclass
class CompareReport:
    """Everything ``compare`` found; ``failures`` empty means every requested check passed."""

    lowered_ops: int
    rtol: float | None
    atol: float | None
    min_agreement: float | None
    sets: list[InputSetResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

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


def image_feeds(specs: Sequence[InputSpec], sources: Sequence[str | Path], n: int, preprocess: str | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                ) -> list[dict[str, np.ndarray]]:
    """The first ``n`` images of ``sources`` (sorted by name), one per feed, for a single [N, 3, H, W] input:
    the preset's standard view (``preprocess``, or guessed from the shape), its mean/std replaced where given."""
    from dataclasses import replace

    from deprune_onnx.evaluation.images import find_images, preprocess as preprocess_image, resolve_preset

    paths = find_images(sources)[:n]
    if len(specs) != 1 or len(specs[0].shape) != 4 or specs[0].shape[1] != 3:
        raise DepruneError("--images needs a model with one [N, 3, H, W] input, got "
                           + ", ".join(f"{s.name} {list(s.shape)}" for s in specs))
    spec = specs[0]
    preset = resolve_preset(preprocess, spec.shape)
    preset = replace(preset, mean=tuple(mean) if mean is not None else preset.mean,
                     std=tuple(std) if std is not None else preset.std)
    return [{spec.name: np.repeat(preprocess_image(p, preset), spec.shape[0], axis=0)} for p in paths]


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


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    if denominator == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(a @ b / denominator)


def _top1_agreement(pruned: list[np.ndarray], original: list[np.ndarray]) -> float | None:
    if pruned[0].ndim < 2 or pruned[0].shape[-1] < 2:
        return None
    pruned_top = np.concatenate([p.reshape(-1, p.shape[-1]).argmax(-1) for p in pruned])
    original_top = np.concatenate([o.reshape(-1, o.shape[-1]).argmax(-1) for o in original])
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
        pruned_values = [iteration[output] for iteration in runs["pruned"]]
        original_values = [iteration[output] for iteration in runs["original"]]
        stats.append(OutputStats(
            output=output,
            max_abs=float(max(r.max_absdiff for r in results)),
            mean_abs=float(np.mean([r.mean_absdiff for r in results])),
            max_rel=float(max(r.max_reldiff for r in results)),
            mean_rel=float(np.mean([r.mean_reldiff for r in results])),
            cosine=float(np.mean([_cosine(p, o) for p, o in zip(pruned_values, original_values)])),
            top1_agreement=_top1_agreement(pruned_values, original_values),
            within_tolerance=all(bool(r) for r in results)))
    return InputSetResult(source, len(feeds), tuple(stats))


def compare_models(original: onnx.ModelProto, pruned: onnx.ModelProto, *, n: int = 16, seed: int = 0,
                   images: Sequence[str | Path] = (), rtol: float | None = None, atol: float | None = None,
                   min_agreement: float | None = None, preprocess: str | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> CompareReport:
    """Run both models and check them.

    Checks: the tolerance check (rtol/atol; defaults 1e-5/1e-5) unless only ``min_agreement`` is given, and
    the top-1 agreement of every class-score output when ``min_agreement`` is given. Failures are listed in
    the report, not raised: the caller decides (the CLI exits 1).
    """
    if n < 1:
        raise DepruneError(f"--n must be >= 1, got {n}")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise DepruneError(f"--min-agreement must be in [0, 1], got {min_agreement}")
    check_tolerance = not (min_agreement is not None and rtol is None and atol is None)
    rtol = DEFAULT_RTOL if rtol is None else rtol
    atol = DEFAULT_ATOL if atol is None else atol
    lowered_ops = len(op_spec.custom_nodes(pruned))
    runnable = lower(pruned) if op_spec.custom_nodes(pruned) else pruned

    specs = input_specs(original)
    report = CompareReport(lowered_ops, rtol if check_tolerance else None, atol if check_tolerance else None,
                           min_agreement)
    feed_sets = [("random", random_feeds(specs, n, seed))]
    if images:
        feed_sets.append(("images", image_feeds(specs, images, n, preprocess, mean, std)))
    for source, feeds in feed_sets:
        result = _compare_set(source, original, runnable, feeds, rtol, atol)
        report.sets.append(result)
        for stats in result.outputs:
            if check_tolerance and not stats.within_tolerance:
                report.failures.append(f"{source}/{stats.output}: outside rtol={rtol:g} atol={atol:g} "
                                       f"(max abs {stats.max_abs:.3g}, max rel {stats.max_rel:.3g})")
            if min_agreement is not None and stats.top1_agreement is not None \
                    and stats.top1_agreement < min_agreement:
                report.failures.append(f"{source}/{stats.output}: top-1 agreement {stats.top1_agreement:.3f} "
                                       f"< {min_agreement:g}")
    if min_agreement is not None and all(s.top1_agreement is None for r in report.sets for s in r.outputs):
        raise DepruneError("--min-agreement given, but no output is shaped like class scores [..., K]")
    return report


def format_report(report: CompareReport) -> str:
    """A fixed-width table, one row per (input set, output), and the verdict."""
    lines = []
    if report.lowered_ops:
        lines.append(f"pruned model: {report.lowered_ops} DRSparseDepthwiseConv node(s) lowered to Conv for "
                     "ONNX Runtime")
    header = f"{'inputs':<8} {'n':>3}  {'output':<28} {'max abs':>10} {'mean abs':>10} {'max rel':>10} " \
             f"{'cosine':>9} {'top-1':>7}"
    lines += [header, "-" * len(header)]
    for result in report.sets:
        for s in result.outputs:
            top1 = "-" if s.top1_agreement is None else f"{s.top1_agreement:.3f}"
            lines.append(f"{result.source:<8} {result.samples:>3}  {s.output[:28]:<28} {s.max_abs:>10.3g} "
                         f"{s.mean_abs:>10.3g} {s.max_rel:>10.3g} {s.cosine:>9.6f} {top1:>7}")
    checks = []
    if report.rtol is not None:
        checks.append(f"rtol={report.rtol:g} atol={report.atol:g}")
    if report.min_agreement is not None:
        checks.append(f"min top-1 agreement={report.min_agreement:g}")
    verdict = "PASSED" if report.passed else "FAILED"
    lines.append(f"{verdict} ({', '.join(checks)})")
    lines += [f"  {failure}" for failure in report.failures]
    return "\n".join(lines)
