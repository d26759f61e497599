"""Where wsop keeps its local state, and the one error for "no local stack".

Kept free of heavy imports (no redis, no asyncio): `wsop token` reads the stack's
secret and `wsop ring --local` its members through here, and neither should pay for a
Redis client to learn a path.
"""

from __future__ import annotations

import os
from pathlib import Path

from wsop.errors import UsageError, WsopError

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


def ensure_state_dir() -> Path:
    """`state_dir()`, created if missing: called before anything is written there.

    An unusable directory (`WSOP_STATE_DIR` under /proc, or naming a regular file)
    would otherwise surface as the first mkdir's FileNotFoundError/FileExistsError, an
    "internal error" naming neither the setting nor the fix. When the user set
    WSOP_STATE_DIR it is their input: a usage error (exit 2); the default location
    being unusable is a runtime error (exit 1).
    """
    import tempfile  # (not at the top: every `wsop` invocation imports this module)

    path = state_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        # it may exist and still refuse files (/proc): find out here, not at the lock
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = "not a directory" if path.exists() and not path.is_dir() else exc.strerror
        if os.environ.get("WSOP_STATE_DIR"):
            raise UsageError(
                f"WSOP_STATE_DIR={str(path)!r} is not a usable state directory ({reason}); "
                "point it at a writable directory"
            ) from None
        raise WsopError(
            f"cannot create the state directory {str(path)!r} ({reason}); "
            "set WSOP_STATE_DIR to a writable directory"
        ) from None
    return path
