"""`--chaos SPEC`: the faults a load test injects, when, and the windows they split it into.

Pure (no I/O, no clock): the CLI validates the spec with it before anything starts, the
nemesis (`wsop.load.nemesis`) reads the parsed faults, and the load users bucket every
message into the window of its send time with `window_edges`, so all sides agree on
which fault a message "belongs" to.

    SPEC   := ITEM ("," ITEM)*
    ITEM   := ACTION "@" TIME
    ACTION := kill-sidecar | restart-redis | scale=N | rebalance | drain
    TIME   := seconds since the start of the run phase, e.g. 10s, 2.5s or 10

Times count from the start of the run phase (every connection up and settled), not
from the launch, so a slow connect phase does not shift the faults into it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from wsop.errors import UsageError
from wsop.local.limits import check_sidecar_count

ACTIONS = ("kill-sidecar", "restart-redis", "scale", "rebalance", "drain")
ACTION_HELP = "kill-sidecar, restart-redis, scale=N, rebalance, drain"
EXAMPLE = "kill-sidecar@10s,restart-redis@20s,scale=4@30s"

# Reconnect backoff of the load users: the first retry comes fast (a killed pod's clients
# should be back in well under a second), later ones spread out so a fleet of clients
# does not hammer a stack that is still recovering.
FIRST_RETRY_S = 0.2
MAX_RETRY_S = 2.0


@dataclass(frozen=True)
class Fault:
    """One planned fault: what, when (seconds into the run phase), and its argument."""

    action: str
    at_s: float
    count: int | None = None  # scale=N: the sidecar count to reach

    @property
    def label(self) -> str:
        name = f"scale={self.count}" if self.action == "scale" else self.action
        return f"{name}@{self.at_s:g}s"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        return cls(str(data["action"]), float(data["at_s"]), data.get("count"))


def _seconds(item: str, raw: str) -> float:
    text = raw.strip().lower()
    if text.endswith("s"):
        text = text[:-1]
    try:
        value = float(text)
    except ValueError:
        raise UsageError(
            f"--chaos item {item!r}: time {raw!r} is not a number of seconds (e.g. 10s)"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"--chaos item {item!r}: time must be 0 s or later, got {raw!r}")
    return value


def _action(item: str, raw: str) -> tuple[str, int | None]:
    name, sep, arg = raw.strip().lower().partition("=")
    if name not in ACTIONS:
        raise UsageError(
            f"--chaos item {item!r}: unknown action {name!r}; valid actions: {ACTION_HELP}"
        )
    if name != "scale":
        if sep:
            raise UsageError(f"--chaos item {item!r}: {name} takes no argument")
        return name, None
    try:
        count = int(arg)
    except ValueError:
        count = 0
    if count < 1:
        raise UsageError(
            f"--chaos item {item!r}: scale needs a sidecar count of 1 or more, e.g. scale=4@30s"
        )
    check_sidecar_count(count, f"--chaos item {item!r}: scale")
    return name, count


def parse_spec(spec: str, duration_s: float | None = None) -> list[Fault]:
    """The faults of `spec`, sorted by time; UsageError (exit 2) on anything unusable.

    With `duration_s`, every fault must fall inside the run phase, and no two may share a
    time (each fault opens its own window; two at once could not be told apart).
    """
    items = [i.strip() for i in spec.split(",")]
    if not spec.strip() or not all(items):
        raise UsageError(f"--chaos needs ACTION@TIME items separated by commas, e.g. {EXAMPLE}")
    faults: list[Fault] = []
    for item in items:
        action, sep, when = item.rpartition("@")
        if not sep or not action.strip():
            raise UsageError(
                f"--chaos item {item!r}: expected ACTION@TIME (e.g. kill-sidecar@10s); "
                f"actions: {ACTION_HELP}"
            )
        name, count = _action(item, action)
        at = _seconds(item, when)
        if duration_s is not None and at >= duration_s:
            raise UsageError(
                f"--chaos item {item!r}: {at:g} s is not inside the {duration_s:g} s run "
                "(times count from the start of the run phase; raise --duration)"
            )
        faults.append(Fault(name, at, count))
    faults.sort(key=lambda f: f.at_s)
    for before, after in zip(faults, faults[1:], strict=False):
        if before.at_s == after.at_s:
            raise UsageError(
                f"--chaos: {before.label} and {after.label} are at the same time; "
                "give each fault its own time"
            )
    return faults


def window_edges(faults: list[Fault]) -> list[float]:
    """Window boundaries in seconds into the run: window 0 is before the first fault,
    window i (i ≥ 1) runs from fault i-1 to the next fault (or the end)."""
    return [f.at_s for f in faults]


def windows(faults: list[Fault], duration_s: float) -> list[dict[str, Any]]:
    """The windows' descriptions: which fault opened each one and its span."""
    edges = [0.0, *window_edges(faults), duration_s]
    out = []
    for i in range(len(faults) + 1):
        out.append(
            {
                "fault": faults[i - 1].label if i else None,
                "from_s": edges[i],
                "to_s": edges[i + 1],
            }
        )
    return out


def reconnect_delay(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before reconnect attempt `attempt` (0 = right after the drop).

    Exponential with ±50% jitter: 0.1-0.3 s, then 0.2-0.6, 0.4-1.2, … capped at 2 s.
    """
    base = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** min(attempt, 16))
    return min(MAX_RETRY_S, base * (0.5 + rand()))
