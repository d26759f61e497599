"""Fixtures of the load tests that run `wsop loadtest --local`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_wsop


@pytest.fixture
def stack_and_redis_stopped() -> Iterator[None]:
    """Whatever the run left (its stack, the embedded Redis it restarted) is stopped."""
    yield
    if (Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").exists():
        run_wsop("down")
    run_wsop("redis", "stop")
