"""Render the surviving mutants of bench/mutation/run.py results as Markdown, each with its classification.

A survivor is "equivalent" when no input the code can receive tells it apart from the original. The rules
below match a mutant by its diff (the mutated line) and give the reason; each was checked by reading the code
(numpy facts were checked in an interpreter: reshape(-2) infers like reshape(-1), astype(None) is float64,
argsort kind is case-insensitive). Survivors no rule matches are listed as "not killed". Killed-after-the-run
survivors are re-run with ``run.py --recheck``, which updates result.json.

    python bench/mutation/report.py bench/.work/mutation/masks bench/.work/mutation/planner ... > part.md
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# (function pattern, regex on the mutant's added lines, reason)
EQUIVALENT: list[tuple[str, str, str]] = [
    (".*", r"astype\(None\)", "astype(None) converts to float64, like astype(np.float64)"),
    (".*", r"reshape\([^)]*-2", "numpy infers a negative size in reshape whatever its value: -2 acts as -1"),
    (".*", r"kind=\"STABLE\"", "numpy reads argsort's kind case-insensitively"),
    ("_ranks", r"axis=\+1|shape\[\+1\]|argsort\(scores, kind", "_ranks is only called on 2-D arrays, where axis 1 is "
     "axis -1 (and -1 is argsort's default)"),
    ("_subgemm_rows", r"slice\(None, |slice\(full \* width\)|slice\(full \* width, None\)",
     "the same slice: start None is 0, stop None is the end (channels)"),
    ("_subgemm_rows", r"channels / width", "adds an empty last block when C is a multiple of 32; every caller writes "
     "nothing for an empty block"),
    ("subgemm_sizes", r"np\.full\(.*width(, dtype=None)?, ?\)|dtype=None\)", "np.full of a Python int is int64 anyway"),
    ("padded_counts", r"np\.asarray\(kept_counts, (dtype=None)?\)", "kept counts are integer arrays already"),
    ("keep_top_per_subgemm", r"offset = rows\.shape\[0\]", "the loop has at most two blocks and the first starts at "
     "0, so = and += give the same offset"),
    ("align_subgemms", r"kept <= vectors", "when K == V, min(restore, V - K) is 0 either way"),
    ("align_subgemms", r"vectors \+ kept", "restoring more than the pruned count restores exactly the pruned ones "
     "(kept weights rank after every pruned one and are set already)"),
    ("align_subgemms", r"vectors - kept\), 1\)", "when K == V every weight is kept, so restoring 1 changes nothing"),
    ("misalignment", r"> 1\)\)", "over-aligned counts are multiples of the tile: 0 or >= tile, never 1 (tile 1 has no "
     "eps)"),
    ("pack_dr_weights", r"np\.asarray\(keep_mask, (dtype=None)?\)", "the mask only goes through flatnonzero, which "
     "reads any dtype's non-zeros as bool would"),
    ("pack_dr_weights", r"reshape\(None\)", "flatnonzero flattens the 4-D mask itself"),
    ("pack_dr_weights", r"np\.zeros\(groups, (None)?\)|np\.zeros\(0, (None)?\)|\(total\) or True|"
     r"np\.array\(tap_indices, (dtype=None)?\)",
     "only reached with no kept tap (an empty result) or cast to int32 at the end anyway"),
    ("run_dr_sparse_dwconv", r"np\.zeros\(\(n, params\.out_channels, h_out, w_out\), (dtype=None)?\)",
     "np.zeros is float64 by default, the dtype named"),
    ("run_dr_sparse_dwconv", r"\(0, 1\), \(top", "one more zero channel at the end of the padded input: no tap reads it"),
    ("run_dr_sparse_dwconv", r"errstate\(over=None\)", "only whether numpy warns changes; the values are the same"),
    ("layer_mask", r"ratio == 1\.0|ratio == 0\.0 and method|method == \"(XXglobalXX|GLOBAL)\"",
     "ratios are < 1 (check_ratio), every method keeps all at ratio 0, and a global layer's mask is replaced by "
     "_apply_global whenever the ratio is not 0"),
    ("layer_mask", r"np\.ones\(weight\.shape, (dtype=None)?\)|bwt_mask\(weight, ratio, \)",
     "the mask is cast to bool by encode_mask; bwt_mask's default width is SUBGEMM_CHANNELS"),
    ("load_hsr_timings", r"encoding=(None|\"UTF-8\")", "UTF-8 is case-insensitive; None is the locale's, UTF-8 here"),
    ("encode_mask", r"reshape\(None\)", "np.packbits without an axis flattens its input itself"),
    ("encode_mask", r"decode\(\"ASCII\"\)", "codec names are case-insensitive"),
    ("load_plan", r"encoding=\"UTF-8\"", "codec names are case-insensitive"),
    ("_upgrade_version1", r"data\.get\(\"dw_ratio\", (None|1\.0)?\)\)",
     "the default is read only when the plan has no dw_ratio, and from_dict then refuses the plan (TypeError "
     "naming dw_ratio) whatever the default"),
    ("_upgrade_version1", r"data\[\"format_version\"\] = (None|3)$",
     "from_dict checks the version before upgrading and never reads it again (the plan gets "
     "PLAN_FORMAT_VERSION)"),
    ("xǁPlanSettingsǁfrom_dict", r"data\.get\(\"keep_zeros\", (None)?\)\)",
     "bool(None) is False, like the default False"),
    ("xǁPruningPlanǁfrom_dict", r"^\s*\)$", "drops format_version=PLAN_FORMAT_VERSION, which is the field's default"),
    ("plan_dw_layers", r"assert weight is not None, ", "the assert cannot fail (analysis lists constant weights "
     "only), so its message is never shown"),
    ("_balance_hsr", r"extra\[plan\.name\] (=|-=|\+= 2)", "extra is only read as a truth value (non-zero = moved)"),
    ("_balance_hsr", r"key <= best\[0\]", "keys end with the layer position, so two keys are never equal"),
    ("_balance_hsr", r"current >= target", "at equality the loop condition (distance > tolerance) is already false"),
]


def added_lines(diff: str) -> str:
    return "\n".join(line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))


def classify(name: str, diff: str) -> str | None:
    function = name.rsplit(".", 1)[-1].split("__mutmut")[0].removeprefix("x_")
    added = added_lines(diff)
    for pattern, regex, reason in EQUIVALENT:
        if re.fullmatch(pattern, function) and re.search(regex, added):
            return reason
    return None


def render(folder: Path) -> str:
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    counts = result["counts"]
    killed = counts.get("killed", 0)
    survivors = sorted(n for n, s in result["statuses"].items() if s != "killed")
    equivalent = {n: classify(n, result["survivors"].get(n, "")) for n in survivors}
    n_equivalent = sum(reason is not None for reason in equivalent.values())
    non_equivalent = sum(counts.values()) - n_equivalent
    lines = [f"### {result['module']}", "",
             f"Tests: {', '.join(result['tests'])}. Mutants: {sum(counts.values())}; killed {killed}; "
             f"not killed {len(survivors)} ({n_equivalent} equivalent). Killed / non-equivalent: "
             f"{killed}/{non_equivalent} = {100 * killed / max(non_equivalent, 1):.1f}%.", ""]
    if "rechecked" in result:
        lines += [f"Re-run with the tests added after the first run (`--recheck`): "
                  f"{sum(s == 'killed' for s in result['rechecked'].values())} of {len(result['rechecked'])} "
                  "survivors are now killed.", ""]
    not_killed = [n for n in survivors if equivalent[n] is None]
    if not_killed:
        lines += ["Not killed and not shown equivalent:", ""]
        for name in not_killed:
            lines.append(f"- `{name.rsplit('.', 1)[-1]}` ({result['statuses'][name]}): "
                         f"`{added_lines(result['survivors'].get(name, '')).strip()[:160]}`")
        lines.append("")
    if n_equivalent:
        lines += ["Equivalent:", ""]
        for name in survivors:
            if equivalent[name] is not None:
                lines.append(f"- `{name.rsplit('.', 1)[-1]}`: `{added_lines(result['survivors'][name]).strip()[:120]}`"
                             f" — {equivalent[name]}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    for folder in sys.argv[1:]:
        print(render(Path(folder)))


if __name__ == "__main__":
    main()
