"""Fixtures of the LB tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lb.helpers import start_standin, stop
from wsop.discovery import Members


@pytest.fixture(scope="module")
def standins() -> Iterator[Members]:
    started = {name: start_standin(name) for name in ("s0", "s1", "s2")}
    yield {name: url for name, (_, url) in started.items()}
    for proc, _ in started.values():
        stop(proc)


@pytest.fixture(params=[0, 2], ids=["per-client", "trunks"])
def trunks(request) -> int:
    """`--trunks` of the LB under test: each sidecar leg its own TCP connection (0), or
    channels on 2 trunks per sidecar."""
    return request.param
