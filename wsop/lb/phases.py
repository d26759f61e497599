"""A relay's phases and what moves it from one to the next: a table, tested without
sockets (`wsop.lb.relay.Relay` keeps only the data that goes with each phase).

    OPEN ──move──▶ SWITCHING ──moved──▶ OPEN         (a sidecar asked for a move)
    OPEN, SWITCHING ──end──▶ ENDING ──all_closed──▶ OVER

- `move`: a sidecar's move frame starts one switch at a time; a second one while a
  switch runs, or any once the relay is ending, is ignored.
- `moved`: the switch is over (done, refused, or failed: the client stays where it is).
- `end`: the first close, from either side or the LB itself, decides how the relay ends
  (who, with which code); later closes only complete it.
- `all_closed`: every socket of the relay is closed.

An event that does not apply in a phase leaves it unchanged (`next_phase` returns
None): a late `moved` after the relay began ending, a second `end`.
"""

from __future__ import annotations

from enum import Enum
from typing import Final


class Phase(Enum):
    OPEN = "open"
    SWITCHING = "switching"
    ENDING = "ending"
    OVER = "over"


TABLE: Final[dict[tuple[Phase, str], Phase]] = {
    (Phase.OPEN, "move"): Phase.SWITCHING,
    (Phase.SWITCHING, "moved"): Phase.OPEN,
    (Phase.OPEN, "end"): Phase.ENDING,
    (Phase.SWITCHING, "end"): Phase.ENDING,
    (Phase.ENDING, "all_closed"): Phase.OVER,
}
EVENTS: Final = frozenset(event for _, event in TABLE)


def next_phase(phase: Phase, event: str) -> Phase | None:
    """The phase after `event`, or None when the event does not apply in `phase`."""
    if event not in EVENTS:
        raise ValueError(f"unknown relay event {event!r}")
    return TABLE.get((phase, event))
