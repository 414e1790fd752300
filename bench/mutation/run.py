"""Mutation testing of the core modules with mutmut 3 (the ``dev`` extra), one module at a time.

Why one module at a time: each module gets its own small, fast test selection (MODULES below), so a run fits
on a shared 2-core machine. mutmut reads its settings from ``pyproject.toml`` in the folder it runs in, so for
every module we build a scratch copy of the checkout under ``bench/.work/mutation/<module>/`` (sources, tests,
samples and a pyproject.toml with a ``[tool.mutmut]`` table for that module), run ``mutmut run`` there and
collect every mutant's status plus the diff of every survivor. The checkout itself is never changed.

Usage (from the repository root, with the dev extra installed: ``pip install -e '.[test,dev]'``):

    python bench/mutation/run.py masks planner packing oracle dependency   # or: all
    python bench/mutation/run.py --summary bench/.work/mutation             # print the table of a finished run

Each module writes ``bench/.work/mutation/<module>/result.json``: counts by status and the survivors' diffs.
bench/mutation/README.md explains how the results become bench/results/mutation_<date>.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "bench" / ".work" / "mutation"
FAST = ["-m", "not model and not native and not torch", "-p", "no:cacheprovider", "-q", "-x"]

# module key -> (source file, the fast tests that exercise it)
MODULES: dict[str, tuple[str, list[str]]] = {
    "masks": ("deprune_onnx/dw/masks.py",
              ["tests/test_masks.py", "tests/test_mask_rules.py", "tests/test_baselines.py",
               "tests/test_pinned_patterns.py"]),
    "planner": ("deprune_onnx/dw/planner.py",
                ["tests/test_masks.py", "tests/test_mask_rules.py", "tests/test_baselines.py",
                 "tests/test_pinned_patterns.py", "tests/test_planner_options.py"]),
    "packing": ("deprune_onnx/op/packing.py",
                ["tests/test_op_packing.py", "tests/test_dr_layout_reference.py"]),
    "oracle": ("deprune_onnx/op/oracle.py",
               ["tests/test_op_oracle.py", "tests/test_dr_layout_reference.py"]),
    "dependency": ("deprune_onnx/pw/dependency.py",
                   ["tests/test_pw_concat.py", "tests/test_pw_split_slice.py", "tests/test_pw_residual.py",
                    "tests/test_pw_se.py", "tests/test_pw_classifier.py", "tests/test_pw_unsupported.py",
                    "tests/test_pw_offsets.py", "tests/test_pw_plan.py", "tests/test_pw_rules.py"]),
    "removal": ("deprune_onnx/pw/removal.py",
                ["tests/test_pw_concat.py", "tests/test_pw_split_slice.py", "tests/test_pw_residual.py",
                 "tests/test_pw_se.py", "tests/test_pw_classifier.py", "tests/test_pw_offsets.py",
                 "tests/test_pw_plan.py", "tests/test_pw_rules.py", "tests/test_pw_removal_checks.py",
                 "tests/test_export_masks_pw.py"]),
    "plan": ("deprune_onnx/plan.py",
             ["tests/test_plan_codec.py", "tests/test_plan.py", "tests/test_keep_zeros.py"]),
    "rewrite": ("deprune_onnx/op/rewrite.py",
                ["tests/test_op_rewrite.py", "tests/test_dr_layout_reference.py", "tests/test_rewrite_notes.py",
                 "tests/test_graph_zoo.py"]),
    "fusion": ("deprune_onnx/op/fusion.py",
               ["tests/test_op_rewrite.py", "tests/test_dr_layout_reference.py", "tests/test_rewrite_notes.py",
                "tests/test_graph_zoo.py", "tests/test_op_fusion.py"]),
}
ORDER = ["masks", "planner", "packing", "oracle", "dependency", "removal", "plan", "rewrite", "fusion"]


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


SKIP_TESTS: set[str] = set()  # --skip-test: tests that cannot import the --source-commit package
SOURCE_COMMIT: str | None = None  # --source-commit: mutate the package as of this commit (tests stay current)


def prepare(key: str) -> Path:
    """A fresh scratch copy of the checkout configured to mutate one module."""
    source, tests = MODULES[key]
    tests = [test for test in tests if (REPO / test).exists() and test not in SKIP_TESTS]
    folder = WORK / key
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if SOURCE_COMMIT:
        archive = subprocess.run(["git", "archive", SOURCE_COMMIT, "deprune_onnx"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    else:
        shutil.copytree(REPO / "deprune_onnx", folder / "deprune_onnx",
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "tests", folder / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    os.symlink(REPO / "samples", folder / "samples")
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    pyproject += (
        "\n[tool.mutmut]\n"
        'source_paths = ["deprune_onnx"]\n'
        f"only_mutate = {_toml_list([source])}\n"
        f"pytest_add_cli_args = {_toml_list(FAST)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        'also_copy = ["samples"]\n'
        "use_git_change_detection = false\n"
    )
    (folder / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    return folder


def collect(folder: Path) -> dict:
    """Status of every mutant (mutmut's own .meta files) and the diff of every mutant not killed."""
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("collect.py"))], cwd=folder,
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    counts: dict[str, int] = {}
    for status in result["statuses"].values():
        counts[status] = counts.get(status, 0) + 1
    result["counts"] = counts
    return result


def run(key: str, max_children: int, only: list[str] | None = None) -> dict:
    """Run mutmut on one module in a fresh scratch copy; ``only``: just these mutants (the others' statuses are
    taken from the previous result.json, which is kept as result_previous.json)."""
    previous_path = WORK / key / "result.json"
    previous = json.loads(previous_path.read_text(encoding="utf-8")) if only and previous_path.exists() else None
    folder = prepare(key)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children),
                           *(only or [])], cwd=folder, capture_output=True, text=True)
    (folder / "mutmut_run.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    result = collect(folder)
    if previous is not None:
        (folder / "result_previous.json").write_text(json.dumps(previous, indent=1), encoding="utf-8")
        statuses = dict(previous["statuses"])
        statuses.update({name: result["statuses"][name] for name in only})
        survivors = {name: diff for name, diff in previous["survivors"].items() if name not in only}
        survivors.update({name: diff for name, diff in result["survivors"].items() if name in only})
        counts: dict[str, int] = {}
        for status in statuses.values():
            counts[status] = counts.get(status, 0) + 1
        result = {"statuses": statuses, "survivors": survivors, "counts": counts,
                  "rechecked": {name: result["statuses"][name] for name in only}}
    result.update(module=MODULES[key][0], tests=[t for t in MODULES[key][1] if (REPO / t).exists()
                                                  and t not in SKIP_TESTS],
                  seconds=round(time.monotonic() - start), returncode=proc.returncode)
    (folder / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def summary(keys: list[str]) -> str:
    rows = ["| module | mutants | killed | survived | no tests | timeout | other | seconds |",
            "|---|---|---|---|---|---|---|---|"]
    for key in keys:
        path = WORK / key / "result.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        c = result["counts"]
        other = sum(v for k, v in c.items() if k not in ("killed", "survived", "no tests", "timeout"))
        rows.append(f"| {result['module']} | {sum(c.values())} | {c.get('killed', 0)} | {c.get('survived', 0)} | "
                    f"{c.get('no tests', 0)} | {c.get('timeout', 0)} | {other} | {result['seconds']} |")
    return "\n".join(rows)


def main() -> None:
    global WORK, SOURCE_COMMIT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"any of {', '.join(ORDER)}, or all")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutant workers (default 2)")
    parser.add_argument("--summary", action="store_true", help="only print the table of finished modules")
    parser.add_argument("--recheck", action="store_true",
                        help="re-run only the mutants that were not killed last time, with today's tests")
    parser.add_argument("--collect-only", action="store_true",
                        help="re-read the statuses of finished runs (after mutmut run was interrupted)")
    parser.add_argument("--source-commit", help="mutate deprune_onnx/ as of this commit (to re-check a run made "
                        "before the code changed; mutant names depend on the code)")
    parser.add_argument("--skip-test", action="append", default=[], help="leave this test file out of the selection")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder (default bench/.work/mutation)")
    args = parser.parse_args()
    WORK, SOURCE_COMMIT = args.work.resolve(), args.source_commit
    SKIP_TESTS.update(args.skip_test)
    keys = ORDER if args.modules in ([], ["all"]) else args.modules
    unknown = [k for k in keys if k not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; expected one of {', '.join(ORDER)}")
    if args.collect_only:
        for key in keys:
            path = WORK / key / "result.json"
            old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {
                "module": MODULES[key][0], "tests": MODULES[key][1], "seconds": None, "returncode": None}
            old.update(collect(WORK / key))
            path.write_text(json.dumps(old, indent=1), encoding="utf-8")
    elif not args.summary:
        for key in keys:
            only = None
            if args.recheck:
                last = json.loads((WORK / key / "result.json").read_text(encoding="utf-8"))
                only = sorted(name for name, status in last["statuses"].items() if status != "killed")
            result = run(key, args.max_children, only)
            print(f"{key}: {result['counts']} in {result['seconds']} s", flush=True)
    print(summary(keys))


if __name__ == "__main__":
    main()
