"""What the LB and the sidecar share as servers: how they run and follow the membership.

Both are asyncio servers with one life cycle — `start()` (listen, start their tasks;
returns the port), serve until SIGTERM or SIGINT, `stop()` (stop accepting, close
clients spread over a window, release what they hold) — and both follow the same
membership source into the same ring. Each of those exists once, here:

- `run(make)`: the blocking entry point of `wsop lb` and `wsop sidecar` (uvloop when
  installed), with the one "listening" line on stderr; SIGHUP calls the server's
  `reload()` when it has one (a rotated TLS certificate);
- `MembershipWatcher`: follow a `MembershipSource`, build the placement off the event
  loop (a maglev table takes ~0.6 s), hand it to the server; a membership the ring
  refuses is logged and skipped, the server keeps routing as before. (The sidecar's own
  watcher used to die on one, silently, and stop following the source for good.)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from wsop.discovery import Members, MembershipSource
from wsop.errors import BackendUnavailable, WsopError
from wsop.gcpolicy import SERVER_YOUNG, quiet_gc

P = TypeVar("P")


class Server(Protocol):
    """The life cycle both servers have."""

    async def start(self) -> int:
        """Listen and start serving; the port listened on (for `--port 0`)."""
        ...

    async def stop(self) -> None:
        """Stop accepting, close what is open (gracefully), release what is held."""
        ...

    def banner(self, port: int) -> str:
        """The one line that says the server is up, and where."""
        ...


def run(make: Callable[[], Server]) -> None:
    """Run the server `make()` builds (inside the event loop: it may bind loop objects)
    until SIGTERM/SIGINT, then stop it gracefully (exit status 0)."""

    async def main() -> None:
        server = make()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reload = getattr(server, "reload", None)
        if reload is not None:  # SIGHUP: re-read what can be re-read (certificates)
            loop.add_signal_handler(signal.SIGHUP, reload)
        try:
            port = await server.start()
        except OSError as exc:
            raise BackendUnavailable(f"cannot listen: {exc.strerror or exc}") from None
        quiet_gc(SERVER_YOUNG)  # everything built so far lives as long as the server
        print(server.banner(port), file=sys.stderr, flush=True)
        await stop.wait()
        await server.stop()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        asyncio.run(main())
    else:
        uvloop.run(main())


class MembershipWatcher:
    """Follows a membership source; `adopt(members, placement)` runs on each change."""

    def __init__(
        self,
        source: MembershipSource,
        build: Callable[[Members], P],
        adopt: Callable[[Members, P], Awaitable[None] | None],
        log: logging.Logger,
    ) -> None:
        self.source = source
        self._build = build
        self._adopt = adopt
        self._log = log

    async def run(self) -> None:
        while True:
            members = await self.source.wait_changed()
            try:
                placement: Any = await asyncio.to_thread(self._build, members)
            except WsopError as exc:  # e.g. a name the ring refuses
                self._log.error("ignoring membership %s: %s", sorted(members), exc)
                continue
            adopted = self._adopt(members, placement)
            if adopted is not None:
                await adopted
