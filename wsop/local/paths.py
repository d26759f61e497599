"""Where wsop keeps its local state, and the one error for "no local stack".

Kept free of heavy imports (no redis, no asyncio): `wsop token` reads the stack's
secret and `wsop ring --local` its members through here, and neither should pay for a
Redis client to learn a path.
"""

from __future__ import annotations

import os
from pathlib import Path

from wsop.errors import WsopError

NO_STACK = "no local stack running; start one with `wsop up`"


class StackNotRunning(WsopError):
    """A command that needs the local stack found none: exit 1 with a hint, the same
    line whichever command asked (`status`, `scale`, `down`, `drain --local`,
    `rebalance --local`, `ring … --local`)."""

    def __init__(self) -> None:
        super().__init__(NO_STACK)


def state_dir() -> Path:
    """`WSOP_STATE_DIR`, else `$XDG_STATE_HOME/wsop`, else `~/.local/state/wsop`."""
    explicit = os.environ.get("WSOP_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "wsop"
