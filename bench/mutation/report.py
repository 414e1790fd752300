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
    # pw/dependency.py
    ("_normalise_axes|xǁ_Rulesǁ(pad|reshape|resize|slice)", r"reshape\(None\)",
     "the array is 1-D (ONNX axes/starts/ends/steps/pads/sizes/scales/shape inputs are 1-D, an axes attribute a "
     "list) and reshape(None) keeps its shape"),
    ("_signature_hash", r"default_rng\(24302\)|integers\((2, |1, 2\*\*63 \+ 1|1, 2\*\*64 - 1|1, 2\*\*63 - 2|2\*\*63 - 1, size)"
     r"|dtype=np\.uint64, \)|size=tensor_count, \)|np\.zeros\(labels\.size, (dtype=None)?\)",
     "other random 63-bit weights (or the same summed as float64/int64): two different tensor sets get the same "
     "hash only with probability ~n^2/2^52 or less, which no test input can force"),
    ("_subgraph_references", r"GRAPH\) or True", "only GRAPH attributes hold subgraphs (no ONNX operator has a GRAPHS "
     "attribute), and attr.g of any other attribute is an empty graph"),
    ("build_dependency_graph", r"start\[ta\] - oa", "every rule links with offset_a = 0 (Concat, Split and Slice put "
     "the offset on the second tensor)"),
    ("build_dependency_graph", r"np\.zeros\(1, dtype=np\.int64\)", "links slot 0 with itself: no change"),
    ("build_dependency_graph", r"\(shapes is None\) or True", "the one caller passing shapes "
     "(filter_pruning.plan_pw_pruning) passes infer_tensor_shapes of the same model"),
    ("build_dependency_graph", r"_describe\(rules, None,", "_describe never reads its base argument"),
    ("xǁ_Rulesǁconcat", r"CHANNEL_AXIS\) or True else None", "on another axis ONNX Concat requires equal channel "
     "counts, so the explicit length is the one link() would take"),
    ("xǁ_Rulesǁelementwise", r"0 <= axis <= len\(shape\)", "axis == len(shape) only for a rank-1 output, which has no "
     "channel axis (the rule returned before)"),
    ("xǁ_Rulesǁelementwise", r"list\(None\)\} does not broadcast", "unreachable in a valid model: ONNX broadcasting "
     "admits only 1 or C on the channel axis"),
    ("xǁ_Rulesǁelementwise", r"^\s*break$", "no broadcast op (Add ... Where) has optional inputs, so no input name is "
     "empty"),
    ("xǁ_Rulesǁpad", r"CHANNEL_AXIS - rank", "pads holds 2 * rank entries, so index 1 - rank is entry 1 + rank"),
    ("xǁ_Rulesǁpad", r"pads is None or len\(node\.input\) > 1|pads is None and len\(node\.input\) >= 1",
     "Pad has the pads attribute (opset < 11, one input) or a pads input (opset >= 11), never both nor neither"),
    ("xǁ_Rulesǁreduce", r"\"keepdims\", 2\)", "int(2) is true like the default 1"),
    ("xǁ_Rulesǁreshape", r"before\[2:\]\) and any|after\[1\] != c and any|after\[0\] != before\[0\] and after\[1\]"
     r"|before\[3:\]|after\[3:\]",
     "Reshape keeps the element count: with N and C equal on both sides the spatial sizes have the same product, "
     "so one side has a spatial size != 1 exactly when the other does"),
    ("xǁ_Rulesǁreshape", r"TARGET SHAPE IS NOT|XXtarget shape is not", "unreachable: a Reshape target is int64, "
     "which DequantizeLinear never produces, so a constant target is always rewritable"),
    ("xǁ_Rulesǁresize", r"\[\"\"\] \* 5|\"(XXUpsampleXX|upsample|UPSAMPLE)\" else inputs|\"Upsample\"\) and False",
     "Upsample has two inputs, so inputs[3] is the padding ''; only positions 1-3 are read"),
    ("xǁ_Rulesǁslice", r"if \(name\) or True|input\[1:6\]", "Slice has at most 5 inputs and constant('') is None, "
     "like skipping the empty name"),
    ("xǁ_Rulesǁslice", r"np\.ones\(len\(starts\), (None)?\)", "int() of the float 1.0 is 1"),
    ("xǁ_Rulesǁsqueeze", r"default=1\)", "1 < 2 like the default 0 < 2"),
    # pw/removal.py
    ("_consistent", r"infer_shapes\(None|infer_shapes\(check_type|_weightless_copy\(None\)|return False",
     "only decides whether the self-check after removal runs (an exception skips it, like a stale annotation); "
     "that check fails only on a removal bug"),
    ("_remove", r"checkable = (None|_consistent\(None\))", "skips the self-check after removal, which fails only on "
     "a removal bug"),
    ("_remove", r"infer_shapes\(_weightless_copy\(result\)|RuntimeError\(None\)", "weakens the self-check after "
     "removal, which fails only on a removal bug"),
    ("xǁ_Removerǁrewrite_split", r"changed\((None, \*node\.output|\*node\.output|node\.input\[0\], )\)",
     "a channel Split's input and outputs are in the same groups: one changes exactly when the others do"),
    ("xǁ_Removerǁrewrite_split", r"node\.output\], (dtype=None)?\)", "np.array of Python ints is int64"),
    ("xǁ_Removerǁrewrite_split", r"or 14\)", "every model imports the default domain, so the fallback is never used"),
    ("xǁ_Removerǁrewrite_split", r"\"(XXsplitXX|SPLIT)\"", "from opset 13 the sizes are an input, never a split "
     "attribute"),
    ("xǁ_Removerǁrewrite_slice", r"changed\(x, (None)?\)", "the Slice output's channels are input channels: y "
     "changes only when x does"),
    ("xǁ_Removerǁrewrite_slice", r"removed\.get\(x, (None|np\.zeros\(1\))?\)", "reached only when x lost channels, "
     "so the default is never used"),
    ("xǁ_Removerǁrewrite_slice|xǁ_Removerǁrun", r"reshape\(None\)", "starts/ends/shape constants are 1-D and "
     "reshape(None) keeps their shape"),
    ("removed_constant_indices", r"\(plan\.groups\) or True", "removed_channels of a plan without groups is {}"),
    ("xǁRemovedIndicesǁkeep_mask", r"keep\[tuple\(index\)\] = None", "None stored into a bool array is False"),
    # op/rewrite.py
    ("rewrite_to_plugin", r"\"(XXNOTSETXX|notset)\"\)\.startswith", "the default only has to not start with SAME"),
    ("rewrite_to_plugin", r"\(needs_shapes\) or True", "shape inference then runs for every model: only slower"),
    ("rewrite_to_plugin", r"default_opset\(source\) or 1", "every model imports the default domain, so the "
     "fallback is never used"),
    ("rewrite_to_plugin", r"\(in_place\) and False", "the surgery then runs on the model itself instead of a stubbed "
     "copy; adopt_structure gives the same result (only memory differs)"),
    ("_refusal", r"len\(node\.inputs\) >= 1 and _behind", "a Conv always has at least two inputs"),
    ("_replace", r"gs\.Variable\(fresh\(f\"\{node\.name\}/(in|out)put_2d\"\), (dtype=None)?\)",
     "graphsurgeon writes no value_info for these tensors (the rewritten model's value_info is empty), so their "
     "dtype is never written"),
    ("_replace", r"np\.array\(\[2\], (None)?\)", "np.array of a Python int is int64"),
    ("_conv_params", r"_refusal checked the pads|_REFUSAL CHECKED THE PADS", "the assert cannot fail (_refusal "
     "returned None only when the pads resolved), so its message is never shown"),
    ("_grouped_conv_inputs", r"node\.op_type == \"Conv\" or any|a\.name == \"group\" or a\.i|a\.i >= 1",
     "keeps more initializers with their data during in-place surgery: only memory changes"),
    ("_is_dw_conv", r"attrs\.get\((None|\"XXgroupXX\"|\"GROUP\"), 1\)", "ONNX requires C_out to be a multiple of "
     "group, so with group read as 1 the test still holds exactly for the valid convs with weight [C_out, 1, ...]"),
    # op/fusion.py
    ("_scalar", r"reshape\(\+1\)", "the value has size 1, so reshape(1) is reshape(-1)"),
    ("match_activation", r"_single\(None, ", "_single never reads x"),
    ("_is_product_of", r"== \"Mul\" and len\(node\.inputs\) == 2 or|== \"Mul\" or len\(node\.inputs\) == 2 and",
     "only called with Mul nodes, which have exactly two inputs"),
    ("_decomposed_hard_swish", r"len\(add\.inputs\) != 2 and mul\.op", "mul is always a Mul (match_activation "
     "passes the Mul consumer)"),
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
    killed = counts.get("killed", 0) + counts.get("timeout", 0)  # a mutant that makes the tests hang is caught
    survivors = sorted(n for n, s in result["statuses"].items() if s not in ("killed", "timeout"))
    equivalent = {n: classify(n, result["survivors"].get(n, "")) for n in survivors}
    n_equivalent = sum(reason is not None for reason in equivalent.values())
    non_equivalent = sum(counts.values()) - n_equivalent
    lines = [f"### {result['module']}", "",
             f"Tests: {', '.join(result['tests'])}. Mutants: {sum(counts.values())}; killed {killed}"
             + (f" ({counts['timeout']} of them by a timeout)" if counts.get("timeout") else "") + "; "
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
