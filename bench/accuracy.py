"""Accuracy of pruned models on images never used to calibrate or to choose a setting (issue 14, docs/accuracy.md).

Split of foolbox's packaged ImageNet samples imagenet_00..19 (the shared imagenet_samples folder holds the same
00..09):
  calibration  imagenet_00..04 (x --calib-crops views)      -> --calib, --allocate, the refit's cross-validation
  choice       imagenet_05..09 (x --crops views)            -> used only to choose defaults (HSR rank, damping)
  evaluation   imagenet_10..19 (x --crops views)            -> the published table
Every row is pruned in memory (``prune_model`` with ``--format dense``, which has the same weights as the plugin
model lowered) and measured against the unpruned model: top-1 agreement, mean KL(unpruned || pruned) in nats,
and top-1 against the ImageNet labels where they apply (MobileNetV2 only).

    python bench/accuracy.py --out bench/results/accuracy.md [--models mobilenet_v2] [--rows b-0.3,b-0.3-calib]

Rows: ``-calib`` = --calib (DW and projection refit, the default); ``alloc-R`` = bh --allocate kl --calib at R;
``-dw-only`` adds --no-calib-project (the DW layers refit alone).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from deprune_onnx.options import CalibOptions, DWOptions, PruneOptions, PWOptions
from deprune_onnx.evaluation import ModelRunner, evaluate_outputs
from deprune_onnx.evaluation.images import find_images, fit_preset, get_preset, image_labels, load_image_set
from deprune_onnx.pipeline import prune_model

REPO = Path(__file__).resolve().parents[1]
MODELS = {  # name -> (file under samples/, preprocessing preset)
    "mobilenet_v2": ("mobilenet_v2_torchvision.onnx", "imagenet"),
    "mobilenet_v3_small": ("ppocr_mobile_v2_cls_mobilenetv3_small.onnx", "ppocr-cls"),
    "pplcnet": ("pplcnet_x1_0_doc_orientation_rapid.onnx", "pplcnet"),
}
CALIB = "imagenet_0[0-4]_*.jpg"
CHOICE = "imagenet_0[5-9]_*.jpg"
EVALUATION = "imagenet_1[0-9]_*.jpg"


def _row(method: str, ratio: float, calib: bool = False, allocate: bool = False, **extra) -> dict:
    return {"method": method, "ratio": ratio, "calib": calib, "allocate": allocate, **extra}


# Row label -> what it prunes. ``dw`` / ``cal`` / ``pw`` hold extra DWOptions / CalibOptions / PWOptions fields.
ROWS = {
    "b-0.3": _row("b", 0.3), "b-0.3-calib": _row("b", 0.3, True),
    "b-0.5": _row("b", 0.5), "b-0.5-calib": _row("b", 0.5, True),
    "bh-0.3": _row("bh", 0.3), "bh-0.3-calib": _row("bh", 0.3, True),
    "bh-0.5": _row("bh", 0.5), "bh-0.5-calib": _row("bh", 0.5, True),
    "alloc-0.5": _row("bh", 0.5, True, True), "alloc-0.7": _row("bh", 0.7, True, True),
    # --no-calib-project: the DW layers refit alone (the default before 2026-11-30), for comparison
    **{f"{label}-dw-only": _row(method, ratio, True, allocate, cal={"project": False})
       for label, method, ratio, allocate in (("b-0.3-calib", "b", 0.3, False), ("b-0.5-calib", "b", 0.5, False),
                                              ("bh-0.3-calib", "bh", 0.3, False), ("bh-0.5-calib", "bh", 0.5, False),
                                              ("alloc-0.5", "bh", 0.5, True), ("alloc-0.7", "bh", 0.7, True))},
}
DEFAULT_ROWS = list(ROWS)


def foolbox_data_dir() -> Path:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench/accuracy.py: needs foolbox's packaged images: pip install foolbox")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def add_row(label: str, spec: str) -> None:
    """``--extra-row LABEL=METHOD,RATIO[,calib][,allocate][,dw.FIELD=V][,cal.FIELD=V][,pw.FIELD=V]``."""
    parts = spec.split(",")
    row = _row(parts[0], float(parts[1]))
    for part in parts[2:]:
        if part in ("calib", "allocate"):
            row[part] = True
            row["calib"] = True
        else:
            key, value = part.split("=", 1)
            group, field = key.split(".", 1)
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = value
            row.setdefault(group, {})[field] = parsed
    ROWS[label] = row


def run_row(model: onnx.ModelProto, row: dict, calib_sources: list[str], preset: str, calib_crops: int
            ) -> tuple[onnx.ModelProto, dict]:
    work = onnx.ModelProto()
    work.CopyFrom(model)
    dw = DWOptions(method=row["method"], dw_ratio=row["ratio"], **row.get("dw", {}))
    calib = None
    if row["calib"]:
        calib = CalibOptions(sources=calib_sources, preprocess=preset, crops=calib_crops,
                             allocate="kl" if row["allocate"] else None, **row.get("cal", {}))
    result = prune_model(work, PruneOptions(dw=dw, pw=PWOptions(**row.get("pw", {})), output_format="dense",
                                            calib=calib))
    return work, result.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=None, help="folder with imagenet_00..19 [foolbox's data]")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS))
    parser.add_argument("--extra-row", action="append", default=[], metavar="LABEL=SPEC")
    parser.add_argument("--crops", type=int, default=10, help="views per choice/evaluation image")
    parser.add_argument("--calib-crops", type=int, default=10)
    parser.add_argument("--sets", default="choice,evaluation", help="image sets to measure on")
    parser.add_argument("--out", type=Path, required=True, help="Markdown results; JSON next to it")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="measure nothing: render the records of earlier runs (their JSON) into one table")
    args = parser.parse_args()
    if args.merge:
        records = [r for path in args.merge for r in json.loads(path.read_text())]
        write_markdown(args, records, datetime.datetime.now(datetime.timezone.utc),
                       [s for s in args.sets.split(",") if s])
        return
    for extra in args.extra_row:
        label, spec = extra.split("=", 1)
        add_row(label, spec)
    images = args.images or foolbox_data_dir()
    calib_sources = [str(images / CALIB)]
    sets = {"choice": CHOICE, "evaluation": EVALUATION}
    chosen_sets = [s for s in args.sets.split(",") if s]
    records = []
    started = datetime.datetime.now(datetime.timezone.utc)
    for model_key in args.models.split(","):
        file_name, preset_name = MODELS[model_key]
        model = onnx.load(str(REPO / "samples" / file_name))
        shape = ModelRunner.image_input_shape(model)
        preset = fit_preset(get_preset(preset_name), shape)
        image_sets = {}
        for name in chosen_sets:
            paths = find_images([str(images / sets[name])])
            image_sets[name] = load_image_set(paths, preset, args.crops, image_labels(paths))
        reference = {name: ModelRunner(model, "reference").run(s.inputs) for name, s in image_sets.items()}
        for label in args.rows.split(","):
            row = ROWS[label]
            start = time.perf_counter()
            pruned, report = run_row(model, row, calib_sources, preset_name, args.calib_crops)
            seconds = time.perf_counter() - start
            runner = ModelRunner(pruned, label)
            record = {"model": model_key, "row": label, **{k: v for k, v in row.items()},
                      "achieved": report["totals"]["dw_ratio_achieved"], "prune_s": round(seconds, 1),
                      "layers": [{k: layer.get(k) for k in ("name", "target_ratio", "achieved_ratio", "pattern",
                                                            "hsr_rank", "calibration")}
                                 for layer in report.get("dw_layers", [])]}
            for name, image_set in image_sets.items():
                evaluation = evaluate_outputs(image_set, runner.run(image_set.inputs), reference[name])
                record[name] = {"agreement": evaluation.agreement.agreement, "kl": evaluation.agreement.kl_mean,
                                "top1": evaluation.labels.top1 if evaluation.labels else None,
                                "reference_top1": (evaluation.reference_labels.top1
                                                   if evaluation.reference_labels else None)}
            records.append(record)
            print(json.dumps({k: record[k] for k in ("model", "row", "achieved", "prune_s", *chosen_sets)}),
                  flush=True)
            args.out.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    write_markdown(args, records, started, chosen_sets)


def write_markdown(args: argparse.Namespace, records: list[dict], started: datetime.datetime,
                   sets: list[str]) -> None:
    import onnxruntime

    lines = ["# Accuracy without training: held-out images", "",
             f"- date: {started.isoformat(timespec='seconds')}",
             f"- machine: {platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))}"
             f" cores available, shared with other jobs; python {platform.python_version()}, onnxruntime "
             f"{onnxruntime.__version__}, numpy {np.__version__}",
             f"- command: `python bench/accuracy.py {' '.join(sys.argv[1:])}`",
             f"- split (foolbox's imagenet_00..19): calibration {CALIB} x {args.calib_crops} views; choice "
             f"{CHOICE} x {args.crops} views (only for choosing defaults); evaluation {EVALUATION} x "
             f"{args.crops} views (never used for calibration or for choosing anything)",
             "- agreement = top-1 agreement with the unpruned model, KL = mean KL(unpruned || pruned) in nats; "
             "top-1 against ImageNet labels only for MobileNetV2", ""]
    for name in sets:
        lines += [f"## {name} images", "",
                  "| model | row | DW PR target | achieved | agreement | KL | top-1 |", "|---|---|---|---|---|---|---|"]
        for r in records:
            m = r[name]
            top1 = f"{100 * m['top1']:.0f}%" if m["top1"] is not None else "-"
            lines.append(f"| {r['model']} | {r['row']} | {r['ratio']} | {r['achieved']:.3f} | "
                         f"{100 * m['agreement']:.0f}% | {m['kl']:.3f} | {top1} |")
        refs = {r["model"]: r[name]["reference_top1"] for r in records if r[name]["reference_top1"] is not None}
        if refs:
            lines += ["", "unpruned top-1: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in refs.items())]
        lines.append("")
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
