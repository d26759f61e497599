"""What a placement does to a population of keys: loads, balance, and the effect of a
membership change. Shared by `wsop ring show|diff` and bench/ring.py, so the CLI and the
benchmark measure the same thing the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsop.ring.bounded import BoundedLoads
from wsop.ring.membership import Membership
from wsop.ring.registry import build


def place(algo: str, membership: Membership, encoded: Sequence[bytes], **opts: Any) -> np.ndarray:
    """Owner index (into `membership.members`) of every encoded key under `algo`.

    For `bounded` the keys are assigned in order from empty loads.
    """
    built = build(algo, membership, **opts)
    if isinstance(built, BoundedLoads):
        return built.assign_indices(encoded)
    return built.indices(encoded)


@dataclass(frozen=True)
class LoadReport:
    """Keys per member and the balance figure `max_over_mean`."""

    algo: str
    loads: dict[str, int]
    max_over_mean: float

    def to_json(self) -> dict[str, Any]:
        return {"algo": self.algo, "nodes": self.loads, "max_over_mean": self.max_over_mean}


def load_report(algo: str, membership: Membership, owners: np.ndarray) -> LoadReport:
    """Loads from owner indices. `max_over_mean` is max(load / fair share), where a
    member's fair share is keys × weight / Σweights — plain max/mean when unweighted."""
    counts = np.bincount(owners, minlength=len(membership)).tolist()
    total = sum(counts)
    shares = membership.shares()
    ratio = max(c / (total * shares[m]) for m, c in zip(membership.members, counts, strict=True))
    loads = dict(zip(membership.members, counts, strict=True))
    return LoadReport(algo, loads, round(ratio, 6))


def ideal_fraction(before: Membership, after: Membership) -> float:
    """The fraction of keys whose owner must change for a name-keyed placement.

    removed = the removed members' share before, added = the new members' share after,
    survivors = Σ |share change| of the members in both. Then

        ideal = removed + added + ½ (survivors − |removed − added|)

    Adding one node to n equal ones gives 1/(n+1), removing one gives 1/n, and replacing
    one by another gives 2/n ("sum of both"): a placement keyed on names cannot know the
    newcomer replaces the leaver, so the leaver's keys scatter and the newcomer takes its
    fair share from everyone. Pure weight changes give the total variation distance.
    """
    a, b = before.shares(), after.shares()
    removed = sum(share for m, share in a.items() if m not in b)
    added = sum(share for m, share in b.items() if m not in a)
    survivors = sum(abs(b[m] - a[m]) for m in a if m in b)
    return removed + added + 0.5 * max(0.0, survivors - abs(removed - added))


@dataclass(frozen=True)
class DiffReport:
    """How many keys change owner between two memberships, and between whom."""

    algo: str
    before: list[str]
    after: list[str]
    keys: int
    moved: int
    moved_fraction: float
    ideal_fraction: float
    matrix: dict[str, dict[str, int]]
    """from → to → keys, only for keys that moved."""

    def to_json(self) -> dict[str, Any]:
        return {
            "algo": self.algo,
            "from": self.before,
            "to": self.after,
            "keys": self.keys,
            "moved": self.moved,
            "moved_fraction": self.moved_fraction,
            "ideal_fraction": self.ideal_fraction,
            "matrix": self.matrix,
        }


def diff_report(
    algo: str,
    before: Membership,
    after: Membership,
    owners_before: np.ndarray,
    owners_after: np.ndarray,
) -> DiffReport:
    """Compare owner indices of the same keys under two memberships (by member name)."""
    union = sorted(set(before.members) | set(after.members))
    rank = {m: i for i, m in enumerate(union)}
    remap_before = np.array([rank[m] for m in before.members], dtype=np.intp)
    remap_after = np.array([rank[m] for m in after.members], dtype=np.intp)
    src, dst = remap_before[owners_before], remap_after[owners_after]
    moved_mask = src != dst
    pairs = src[moved_mask] * len(union) + dst[moved_mask]
    matrix: dict[str, dict[str, int]] = {}
    for pair, count in zip(*np.unique(pairs, return_counts=True), strict=True):
        source, target = union[int(pair) // len(union)], union[int(pair) % len(union)]
        matrix.setdefault(source, {})[target] = int(count)
    keys = int(src.size)
    moved = int(moved_mask.sum())
    return DiffReport(
        algo=algo,
        before=list(before.members),
        after=list(after.members),
        keys=keys,
        moved=moved,
        moved_fraction=round(moved / keys, 6) if keys else 0.0,
        ideal_fraction=round(ideal_fraction(before, after), 6),
        matrix=matrix,
    )
