"""Membership sources: parsing (pure) and the members file followed by mtime polling."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from wsop.discovery import (
    CallableMembership,
    MembershipSource,
    RegistryFileMembership,
    StaticMembership,
    parse_peers,
    parse_registry,
    source_from_flags,
)
from wsop.errors import InputError, UsageError


def test_parse_peers() -> None:
    assert parse_peers("s0=ws://127.0.0.1:1, s1=wss://h:2/") == {
        "s0": "ws://127.0.0.1:1",
        "s1": "wss://h:2",
    }


@pytest.mark.parametrize(
    "spec",
    ["", " ", "s0", "s0=http://h:1", "s0=ws://h:1,s0=ws://h:2", "=ws://h:1", "s0=ws://h:1,,"],
)
def test_parse_peers_rejects(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_peers(spec)


def _doc(*sidecars: tuple[str, str], **extra: object) -> str:
    return json.dumps(
        {"version": 1, **extra, "sidecars": [{"name": n, "url": u, "pid": 1} for n, u in sidecars]}
    )


def test_parse_registry_ignores_other_keys() -> None:
    text = _doc(("s0", "ws://127.0.0.1:1"), ("s1", "ws://127.0.0.1:2/"), algo="maglev", lb={})
    assert parse_registry(text) == {"s0": "ws://127.0.0.1:1", "s1": "ws://127.0.0.1:2"}
    assert parse_registry("{}") == {}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"sidecars": {}}',
        '{"sidecars": [{"url": "ws://h:1"}]}',
        '{"sidecars": [{"name": "s0"}]}',
        '{"sidecars": [{"name": "s0", "url": "ws://h:1"}, {"name": "s0", "url": "ws://h:2"}]}',
    ],
)
def test_parse_registry_rejects(text: str) -> None:
    with pytest.raises(InputError):
        parse_registry(text)


def test_source_from_flags(tmp_path: Path) -> None:
    static = source_from_flags(None, "s0=ws://h:1")
    assert isinstance(static, StaticMembership) and isinstance(static, MembershipSource)
    assert static.current() == {"s0": "ws://h:1"}
    from_file = source_from_flags(tmp_path / "stack.json", None)
    assert isinstance(from_file, RegistryFileMembership) and from_file.current() == {}
    with pytest.raises(UsageError):
        source_from_flags(tmp_path / "x", "s0=ws://h:1")
    with pytest.raises(UsageError):
        source_from_flags(None, None)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@pytest.mark.asyncio
async def test_registry_file_follows_changes(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    source = RegistryFileMembership(path, interval=0.02)
    assert source.current() == {}
    waiter = asyncio.ensure_future(source.wait_changed())
    await asyncio.sleep(0.05)
    assert not waiter.done()  # nothing changed yet
    _write(path, _doc(("s0", "ws://127.0.0.1:1")))
    assert await asyncio.wait_for(waiter, 2) == {"s0": "ws://127.0.0.1:1"}

    # a rewrite with the same members is not a change; a new member is
    _write(path, _doc(("s0", "ws://127.0.0.1:1"), version=2))
    waiter = asyncio.ensure_future(source.wait_changed())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    _write(path, _doc(("s0", "ws://127.0.0.1:1"), ("s1", "ws://127.0.0.1:2")))
    assert set(await asyncio.wait_for(waiter, 2)) == {"s0", "s1"}

    # a broken file keeps the last good membership (and says why); removal empties it
    path.write_text("{broken")
    os.utime(path, ns=(1, 1))
    assert set(source.current()) == {"s0", "s1"} and source.last_error
    path.unlink()
    assert await asyncio.wait_for(source.wait_changed(), 2) == {}


@pytest.mark.asyncio
async def test_static_never_changes() -> None:
    source = StaticMembership.from_spec("s0=ws://h:1")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(source.wait_changed(), 0.05)


@pytest.mark.asyncio
async def test_callable_source() -> None:
    state = {"s0": "ws://h:1"}
    source = CallableMembership(lambda: state, interval=0.01)
    assert source.current() == {"s0": "ws://h:1"}
    state = {"s0": "ws://h:1", "s1": "ws://h:2"}
    assert await asyncio.wait_for(source.wait_changed(), 1) == state


@pytest.mark.asyncio
async def test_a_change_another_reader_saw_first_still_reaches_the_watcher(
    tmp_path: Path,
) -> None:
    """A sidecar reads the membership on every presence heartbeat (`current()`); when one
    of those reads came between a members-file change and the watcher's next poll, the
    watcher never saw the change — that sidecar kept routing over the old ring for good
    (a scale-down then waited 30 s for it and failed)."""
    path = tmp_path / "stack.json"
    _write(path, _doc(("s0", "ws://127.0.0.1:1"), ("s1", "ws://127.0.0.1:2")))
    source = RegistryFileMembership(path, interval=0.02)
    assert set(source.current()) == {"s0", "s1"}  # the watcher's baseline
    _write(path, _doc(("s0", "ws://127.0.0.1:1")))
    assert set(source.current()) == {"s0"}  # another reader sees the change first
    assert set(await asyncio.wait_for(source.wait_changed(), 2)) == {"s0"}
