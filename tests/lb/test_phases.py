"""The relay's phase table (wsop/lb/phases.py), without sockets: every (phase, event)
pair, and the walks a relay takes."""

from __future__ import annotations

import pytest

from wsop.lb.phases import EVENTS, TABLE, Phase, next_phase

EXPECTED = {
    (Phase.OPEN, "move"): Phase.SWITCHING,
    (Phase.OPEN, "moved"): None,
    (Phase.OPEN, "end"): Phase.ENDING,
    (Phase.OPEN, "all_closed"): None,
    (Phase.SWITCHING, "move"): None,  # one switch at a time
    (Phase.SWITCHING, "moved"): Phase.OPEN,
    (Phase.SWITCHING, "end"): Phase.ENDING,
    (Phase.SWITCHING, "all_closed"): None,
    (Phase.ENDING, "move"): None,  # no switch once ending
    (Phase.ENDING, "moved"): None,  # a switch that ends late leaves it ending
    (Phase.ENDING, "end"): None,  # the first close decided how it ends
    (Phase.ENDING, "all_closed"): Phase.OVER,
    (Phase.OVER, "move"): None,
    (Phase.OVER, "moved"): None,
    (Phase.OVER, "end"): None,
    (Phase.OVER, "all_closed"): None,
}


@pytest.mark.parametrize(("phase", "event"), list(EXPECTED))
def test_every_phase_and_event(phase: Phase, event: str) -> None:
    assert next_phase(phase, event) is EXPECTED[(phase, event)]


def test_the_table_is_exactly_what_is_expected() -> None:
    assert {"move", "moved", "end", "all_closed"} == EVENTS
    assert {k: v for k, v in EXPECTED.items() if v is not None} == TABLE
    with pytest.raises(ValueError, match="unknown relay event"):
        next_phase(Phase.OPEN, "explode")


def test_a_move_interrupted_by_the_end_never_reopens_the_relay() -> None:
    phase = Phase.OPEN
    for event in ("move", "end", "moved", "all_closed"):
        phase = next_phase(phase, event) or phase
    assert phase is Phase.OVER
