"""The PW pruning plan: pure, JSON-serialisable data saying which channels each group loses.

The plan is the seam between deciding (``filter_pruning.plan_pw_pruning``) and doing (``removal.apply_pw_plan``):
it can be written to JSON, read back, edited by hand and applied again. A group is identified by its members
(tensor, offset of the group's channel 0 in that tensor, the tensor's channel count), so applying a plan to a
model it was not made for fails with a clear message instead of cutting the wrong channels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from deprune_onnx.errors import DepruneError

SCOPES = ("project", "all")


@dataclass
class PWGroupPlan:
    """One channel group: the same group indices are removed from every member tensor (offset + index)."""

    id: str
    producers: list[str]  # Conv nodes whose output filters are these channels
    readers: list[str]  # nodes whose input channels / in-features are removed with them
    members: list[dict[str, Any]]  # {"tensor", "offset", "channels"}
    channels: int  # group size before pruning
    kept: int
    removed: list[int]  # sorted group indices
    target_ratio: float
    ratio: float  # achieved: len(removed) / channels
    aligned: bool  # kept is a multiple of the plan's alignment
    importance: str  # "l2" or "l2*bn" (BN scale folded in)
    reason: str | None = None  # why a skipped group is left untouched

    def member_key(self) -> tuple[tuple[str, int, int], ...]:
        return tuple(sorted((str(m["tensor"]), int(m["offset"]), int(m["channels"])) for m in self.members))


@dataclass
class PWPlan:
    """Structural PW pruning of a model: groups to cut and groups left alone (with the reason)."""

    ratio: float
    align: int
    scope: str
    method: str = "l2"
    groups: list[PWGroupPlan] = field(default_factory=list)
    skipped: list[PWGroupPlan] = field(default_factory=list)

    @property
    def channels_before(self) -> int:
        return sum(group.channels for group in self.groups)

    @property
    def channels_after(self) -> int:
        return sum(group.kept for group in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PWPlan:
        """Read a plan back from ``to_dict`` output (e.g. JSON); malformed input is a DepruneError."""
        try:
            groups = [PWGroupPlan(**entry) for entry in data.get("groups", [])]
            skipped = [PWGroupPlan(**entry) for entry in data.get("skipped", [])]
            plan = cls(ratio=float(data["ratio"]), align=int(data["align"]), scope=str(data["scope"]),
                       method=str(data.get("method", "l2")), groups=groups, skipped=skipped)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DepruneError(f"PW plan: malformed ({type(exc).__name__}: {exc})") from None
        for group in groups:
            removed = group.removed
            valid = (isinstance(removed, list) and all(isinstance(i, int) for i in removed)
                     and removed == sorted(set(removed)) and all(0 <= i < group.channels for i in removed)
                     and group.kept == group.channels - len(removed) and group.kept >= 1)
            if not valid:
                raise DepruneError(f"PW plan group {group.id}: 'removed' must be sorted unique indices in "
                                   f"[0, {group.channels}) leaving kept={group.kept} >= 1 channels")
        return plan
