"""Where the sidecars are: one small interface over every membership source.

The load balancer and every sidecar must route with the *same* ring, so they must see
the same membership: a mapping ``{sidecar name: ws base url}`` (names build the ring,
urls are where to dial). Sources:

- `StaticMembership` — ``--peers s0=ws://127.0.0.1:9001,s1=ws://…`` (never changes);
- `RegistryFileMembership` — the members file `wsop up` writes (see docs/stack.md),
  re-read when its mtime changes (polled, ~0.3 s: no inotify dependency, works on
  every filesystem and in every container);
- later, a Kubernetes EndpointSlice source: subclass `PollingMembership` with a
  ``fetch`` that lists the slices (or implement `MembershipSource` over a watch) and
  add its flags to `source_from_flags`. Nothing else has to change.

Parsing is pure (`parse_peers`, `parse_registry`) so every edge case is a unit test;
the classes are thin I/O around it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from wsop.checks import check_member_name
from wsop.errors import InputError, UsageError

Members = dict[str, str]
"""Sidecar name -> WebSocket base url (``ws://host:port``, no path)."""

DEFAULT_POLL_INTERVAL_S = 0.3
_SCHEMES = ("ws://", "wss://")


@runtime_checkable
class MembershipSource(Protocol):
    """Anything that can tell who the sidecars are now, and wait until that changes."""

    def current(self) -> Members:
        """The membership as of now (a fresh dict the caller may keep)."""
        ...

    async def wait_changed(self) -> Members:
        """Block until the membership differs from the last one returned, then return it."""
        ...


# --- pure parsing -------------------------------------------------------------------


def normalize_url(name: str, url: str) -> str:
    """A sidecar base url without trailing slash; only ws:// and wss:// make sense here."""
    url = url.strip()
    if not url.startswith(_SCHEMES) or len(url) <= len("wss://"):
        raise UsageError(f"sidecar {name!r}: url must start with ws:// or wss://, got {url!r}")
    return url.rstrip("/")


def _check_name(name: str, where: str) -> str:
    """Member names are DNS labels (`wsop.checks.check_member_name`), whatever the source."""
    try:
        return check_member_name(name)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def parse_peers(spec: str) -> Members:
    """Parse ``--peers s0=ws://127.0.0.1:9001,s1=ws://127.0.0.1:9002``."""
    members: Members = {}
    if not spec.strip():
        raise UsageError("--peers is empty: give name=ws://host:port pairs")
    for entry in spec.split(","):
        entry = entry.strip()
        name, eq, url = entry.partition("=")
        if not eq:
            raise UsageError(f"--peers entry {entry!r} is not name=ws://host:port")
        name = _check_name(name.strip(), "--peers")
        if name in members:
            raise UsageError(f"--peers names {name!r} twice")
        members[name] = normalize_url(name, url)
    return members


def parse_registry(text: str, where: str = "members file") -> Members:
    """The sidecars listed in a members file (other keys are the launcher's business)."""
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{where}: not JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a JSON object")
    sidecars = data.get("sidecars", [])
    if not isinstance(sidecars, list):
        raise InputError(f"{where}: 'sidecars' must be a list")
    members: Members = {}
    for i, entry in enumerate(sidecars):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise InputError(f"{where}: sidecars[{i}] needs a string 'name'")
        if not isinstance(entry.get("url"), str):
            raise InputError(f"{where}: sidecars[{i}] needs a string 'url'")
        name = _check_name(entry["name"], where)
        if name in members:
            raise InputError(f"{where}: sidecar {name!r} listed twice")
        members[name] = normalize_url(name, entry["url"])
    return members


# --- sources ------------------------------------------------------------------------


class StaticMembership:
    """A fixed membership (``--peers``): `wait_changed` never returns."""

    def __init__(self, members: Mapping[str, str]) -> None:
        self._members = {_check_name(n, "members"): u for n, u in members.items()}

    @classmethod
    def from_spec(cls, spec: str) -> StaticMembership:
        return cls(parse_peers(spec))

    def current(self) -> Members:
        return dict(self._members)

    async def wait_changed(self) -> Members:
        await asyncio.get_running_loop().create_future()  # never resolves
        raise AssertionError("unreachable")


class PollingMembership:
    """A source re-read every `interval` seconds; the seam for API-backed sources.

    `probe()` returns a cheap change token (an mtime, a resourceVersion) and `fetch()`
    the membership; `fetch` runs only when the token moved. A failed fetch keeps the
    last good membership: a half-written file or an API blip must not empty the ring.
    """

    def __init__(self, interval: float = DEFAULT_POLL_INTERVAL_S) -> None:
        self.interval = interval
        self._token: object = None
        self._members: Members = {}
        self._returned: Members | None = None
        self.last_error: str | None = None

    def probe(self) -> object:
        raise NotImplementedError

    def fetch(self) -> Members:
        raise NotImplementedError

    def _refresh(self) -> Members:
        token = self.probe()
        if token != self._token:
            try:
                self._members = self.fetch()
                self.last_error = None
                self._token = token
            except (OSError, UsageError) as exc:
                self.last_error = str(exc)  # retry on the next poll
        return self._members

    def current(self) -> Members:
        members = dict(self._refresh())
        if self._returned is None:  # the baseline the first `wait_changed` compares with
            self._returned = dict(members)
        return members

    async def wait_changed(self) -> Members:
        """The membership once it differs from what this method last returned (at first:
        from the first `current()`). Other readers' `current()` calls never count as
        "seen": a sidecar reads the membership on every heartbeat, and its watcher used
        to miss a change that such a read happened to see first — for good."""
        while True:
            members = self._refresh()
            if members != self._returned:
                self._returned = dict(members)
                return dict(members)
            await asyncio.sleep(self.interval)


class RegistryFileMembership(PollingMembership):
    """The members file written by `wsop up`/`wsop scale`; a missing file means no sidecars.

    The launcher replaces the file atomically (temp file + rename), so a read never sees
    half a document; (mtime_ns, size, inode) catches every replacement.
    """

    def __init__(self, path: Path, interval: float = DEFAULT_POLL_INTERVAL_S) -> None:
        super().__init__(interval)
        self.path = Path(path)

    def probe(self) -> object:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def fetch(self) -> Members:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        return parse_registry(text, str(self.path))

    def check(self) -> None:
        """At start-up, refuse a file that cannot be a members file (a directory, a CSV,
        `{"members": 5}`, an empty file). Later reads keep the last good membership on
        an error (a half-written file must not empty the ring), so without this check a
        wrong --members-file started a server of "0 sidecars" that never said why. A
        missing file is fine: the launcher may write it after the server starts."""
        where = f"--members-file {self.path}"
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise InputError(f"{where}: cannot read ({reason})") from None
        parse_registry(text, where)
        if not isinstance(json.loads(text).get("sidecars"), list):
            raise InputError(f"{where}: no 'sidecars' list; is it a members file `wsop up` writes?")


class CallableMembership(PollingMembership):
    """Any ``() -> Members`` function, polled (handy for tests and quick integrations)."""

    def __init__(
        self, fn: Callable[[], Mapping[str, str]], interval: float = DEFAULT_POLL_INTERVAL_S
    ) -> None:
        super().__init__(interval)
        self._fn = fn
        self._tick = 0

    def probe(self) -> object:
        self._tick += 1  # always refetch: the function is the source of truth
        return self._tick

    def fetch(self) -> Members:
        members = self._fn().items()
        return {_check_name(name, "members"): normalize_url(name, url) for name, url in members}


def source_from_flags(members_file: Path | None, peers: str | None) -> MembershipSource:
    """The one place flags become a source (exactly one of ``--members-file``/``--peers``).

    A Kubernetes source will add its own flags (namespace, selector) here.
    """
    if members_file is not None and peers is not None:
        raise UsageError("give either --members-file or --peers, not both")
    if peers is not None:
        return StaticMembership.from_spec(peers)
    if members_file is not None:
        source = RegistryFileMembership(members_file)
        source.check()
        return source
    raise UsageError("no sidecars: give --members-file FILE or --peers name=ws://host:port,…")
