"""The PruningPlan: what to prune, as pure data.

The plan is the seam between deciding (masks, HSR patterns, PW channel groups) and doing (editing the model).
It is JSON-serialisable, can be written next to the output (``--plan-out``), edited, read back and applied
again (``--plan``), and the report is rendered from it. Masks travel as bit-packed base64 (one bit per weight,
row-major, 1 = kept), which is compact and byte-stable.
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deprune_onnx.errors import DepruneError

PLAN_FORMAT_VERSION = 1


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
    """The decision for one DW layer."""

    name: str
    weight: str
    shape: list[int]
    method: str                 # dcp | b | bh | none (excluded)
    target_ratio: float
    mask: str                   # encode_mask(keep)
    kept_per_subgemm: list[int]
    vectors_per_subgemm: list[int]
    pattern: str = "-"          # HSR: o | u | aligned; "-" for dcp/b
    alpha: float | None = None
    alpha_source: str | None = None  # tile-model | measured
    eps: int | None = None
    beta: float | None = None
    hsr_rank: str | None = None  # bh: the rule that chose o/u (beta | damage)
    hsr_damage: dict[str, Any] | None = None  # damage rank: expected damage of each candidate alignment, source
    note: str = ""
    calibration: dict[str, Any] | None = None   # what --calib did: residual before/after, samples, damping
    sensitivity: dict[str, Any] | None = None   # what --allocate measured and chose for this layer

    def keep_mask(self) -> np.ndarray:
        return decode_mask(self.mask, tuple(self.shape))


@dataclass
class PruningPlan:
    method: str
    dw_ratio: float
    tile: int
    subgemm_channels: int
    dw_layers: list[DWLayerPlan] = field(default_factory=list)
    pw: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None   # --calib: images, samples, preprocessing, damping
    allocation: dict[str, Any] | None = None    # --allocate: method, target, achieved, predicted loss
    format_version: int = PLAN_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningPlan":
        if data.get("format_version") != PLAN_FORMAT_VERSION:
            raise ValueError(f"unsupported plan format_version {data.get('format_version')!r}")
        fields = dict(data)
        fields["dw_layers"] = [DWLayerPlan(**layer) for layer in data.get("dw_layers", [])]
        return cls(**fields)

    def dw_pattern_string(self) -> str:
        """The paper's DW-Pat. string, e.g. '9u8o' (under-aligned count, then over-aligned count)."""
        under = sum(layer.pattern == "u" for layer in self.dw_layers)
        over = sum(layer.pattern == "o" for layer in self.dw_layers)
        return f"{under}u{over}o"


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
