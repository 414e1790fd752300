"""The PruningPlan: what to prune, as pure data (format version 2).

The plan is the seam between deciding (masks, HSR patterns, PW channel groups) and doing (editing the model).
It holds decisions only: everything ``--plan`` needs to re-apply them to the same model. What happened while
pruning (allocation curves, refit residuals, keep-zeros findings, the rewrite) is not a decision; it goes into
the PruneRecord (record.py) carried by PruneResult and rendered into the report. The pipeline never changes a
plan after planning (the top level is frozen; a step that changes masks, the saliency refit, builds a new plan).

The plan is JSON-serialisable, can be written next to the output (``--plan-out``), edited, read back and applied
again (``--plan``). Masks travel as bit-packed base64 (one bit per weight, row-major, 1 = kept), which is
compact and byte-stable. Version-1 files (written before the plan/record split) are still read: their records
(``calibration``, ``allocation``, per-layer ``calibration``/``sensitivity``, ``options.keep_zeros``) are dropped
and their ``options`` become ``settings``.
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from deprune_onnx.errors import DepruneError
from deprune_onnx.options import DWOptions, PWOptions
from deprune_onnx.pw.plan import PWPlan

PLAN_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)


def encode_mask(keep: np.ndarray) -> str:
    return base64.b64encode(np.packbits(keep.astype(bool).reshape(-1)).tobytes()).decode("ascii")


def decode_mask(data: str, shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape))
    bits = np.unpackbits(np.frombuffer(base64.b64decode(data, validate=True), dtype=np.uint8))
    if bits.size < size or bits.size - size >= 8:
        raise ValueError(f"mask holds {bits.size} bits, expected {size}")
    return bits[:size].astype(bool).reshape(shape)


@dataclass
class DWLayerPlan:
    """The decision for one DW layer.

    Fields:
        name: the DW Conv node's name; weight: its weight initializer's name.
        shape: the weight's shape [C_out, 1, kh, kw].
        method: dcp | b | bh | channel | global, or ``none`` for a layer left dense (excluded).
        target_ratio: the ratio asked for this layer (fraction of its weights pruned, [0, 1)).
        mask: ``encode_mask(keep)``, the keep mask of the weight (1 = kept).
        kept_per_subgemm / vectors_per_subgemm: K_g and V_g of each 32-channel sub-GEMM (vectors = weights).
        pattern: HSR alignment, ``o`` (over-aligned), ``u`` (under-aligned) or ``aligned``; ``-`` without HSR.
        alpha: HSR speedup of removing the partial tile (ratio of times, dimensionless); alpha_source:
            ``tile-model`` or ``measured``; eps: vectors in the partial tile; beta = alpha / eps (HSR's ranking).
        hsr_rank: bh: the rule that chose ``o``/``u`` (``beta`` or ``damage``); None without HSR.
        hsr_damage: ``damage`` rank: the expected damage of each candidate alignment (under, over, one more tile
            each) and its source (``measured KL`` or ``weight energy``); None otherwise.
        note: why the planner did something unusual (balance step, an under-aligned layer), else "".
    """

    name: str
    weight: str
    shape: list[int]
    method: str
    target_ratio: float
    mask: str
    kept_per_subgemm: list[int]
    vectors_per_subgemm: list[int]
    pattern: str = "-"
    alpha: float | None = None
    alpha_source: str | None = None
    eps: int | None = None
    beta: float | None = None
    hsr_rank: str | None = None
    hsr_damage: dict[str, Any] | None = None
    note: str = ""

    def keep_mask(self) -> np.ndarray:
        """The keep mask, bool array of ``shape``; ValueError when ``mask`` does not hold ``shape``'s bits."""
        return decode_mask(self.mask, tuple(self.shape))


@dataclass(frozen=True)
class PlanSettings:
    """The options the plan was made with: ``pw`` is re-applied with the plan (nm24 masks are not stored as
    groups); ``dw`` and ``keep_zeros`` say how the masks were chosen (informative: the masks are the decision)."""

    dw: DWOptions = field(default_factory=DWOptions)
    pw: PWOptions = field(default_factory=PWOptions)
    keep_zeros: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanSettings:
        dw = dict(data.get("dw") or {})
        dw["layer_ratios"] = [(str(name), float(ratio)) for name, ratio in dw.get("layer_ratios", [])]
        return cls(dw=DWOptions(**dw), pw=PWOptions(**(data.get("pw") or {})),
                   keep_zeros=bool(data.get("keep_zeros", False)))


@dataclass(frozen=True)
class PruningPlan:
    """Every pruning decision of one model: the DW masks and the PW channel groups.

    Fields:
        method: the DW method (see DWLayerPlan.method); dw_ratio: the model-wide target DW ratio (with
            ``--keep-zeros``: the input's zero ratio); tile: T, the GPU tile along K (vectors);
            subgemm_channels: channels per sub-GEMM (32).
        dw_layers: one DWLayerPlan per DW layer, excluded layers too (method ``none``), in graph order.
        pw: the PW channel groups removed (``PWPlan``), or None.
        settings: the options the plan was made with (PlanSettings).
        format_version: 2 (``to_dict`` writes it; ``from_dict`` reads 1 and 2).

    Errors: ``from_dict`` raises ValueError/TypeError/KeyError on malformed data; ``load_plan`` turns every
    problem into one DepruneError line naming the file.
    """

    method: str
    dw_ratio: float
    tile: int
    subgemm_channels: int
    dw_layers: tuple[DWLayerPlan, ...] = ()
    pw: PWPlan | None = None
    settings: PlanSettings = field(default_factory=PlanSettings)
    format_version: int = PLAN_FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "dw_layers", tuple(self.dw_layers))  # a list given by a caller becomes a tuple

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dw_layers"] = list(data["dw_layers"])
        data["format_version"] = PLAN_FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        version = data.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            raise ValueError(f"unsupported plan format_version {version!r} (this version reads "
                             f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))})")
        if version == 1:
            data = _upgrade_version1(data)
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown plan field(s) {', '.join(sorted(unknown))}")
        fields = {key: data[key] for key in ("method", "dw_ratio", "tile", "subgemm_channels") if key in data}
        return cls(**fields,  # a missing field is a TypeError naming it
                   dw_layers=tuple(DWLayerPlan(**layer) for layer in data.get("dw_layers", [])),
                   pw=PWPlan.from_dict(data["pw"]) if data.get("pw") else None,
                   settings=PlanSettings.from_dict(data.get("settings") or {}),
                   format_version=PLAN_FORMAT_VERSION)

    def with_masks(self, masks: dict[str, np.ndarray]) -> PruningPlan:
        """A new plan whose layers named in ``masks`` keep those masks (K per sub-GEMM recounted)."""
        from deprune_onnx.dw.masks import kept_per_subgemm

        if not masks:
            return self
        layers = tuple(replace(layer, mask=encode_mask(masks[layer.name]),
                               kept_per_subgemm=[int(k) for k in kept_per_subgemm(masks[layer.name])])
                       if layer.name in masks else layer for layer in self.dw_layers)
        return replace(self, dw_layers=layers)

    def dw_pattern_string(self) -> str:
        """The paper's DW-Pat. string, e.g. '9u8o' (under-aligned count, then over-aligned count)."""
        under = sum(layer.pattern == "u" for layer in self.dw_layers)
        over = sum(layer.pattern == "o" for layer in self.dw_layers)
        return f"{under}u{over}o"


_V1_RECORD_FIELDS = ("calibration", "allocation")
_V1_LAYER_RECORD_FIELDS = ("calibration", "sensitivity")


def _upgrade_version1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 plan as version-2 data: records dropped, ``options`` -> ``settings``."""
    data = {key: value for key, value in data.items() if key not in _V1_RECORD_FIELDS}
    data["dw_layers"] = [{key: value for key, value in layer.items() if key not in _V1_LAYER_RECORD_FIELDS}
                         for layer in data.get("dw_layers", [])]
    options = data.pop("options", None) or {}
    keep_zeros = "keep_zeros" in options
    dw = dict(options.get("dw") or {})
    if keep_zeros:  # version 1 stored only method and tile for --keep-zeros; the ratio is the zero ratio
        dw.setdefault("dw_ratio", data.get("dw_ratio", 0.0))
    data["settings"] = {"dw": dw, "pw": options.get("pw") or {}, "keep_zeros": keep_zeros}
    data["format_version"] = 2
    return data


def load_plan(path: str | Path) -> PruningPlan:
    """Read a plan written by ``--plan-out``; any problem is one DepruneError line naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        plan = PruningPlan.from_dict(data)
        for layer in plan.dw_layers:
            layer.keep_mask()
        return plan
    except FileNotFoundError:
        raise DepruneError(f"{path}: plan file not found") from None
    except IsADirectoryError:
        raise DepruneError(f"{path}: is a directory, expected a plan JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DepruneError(f"{path}: cannot read plan ({exc})") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DepruneError(f"{path}: not a valid pruning plan ({type(exc).__name__}: {exc})") from None
