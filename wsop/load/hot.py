"""Which twin runs the generator's hot loops: the compiled one or the pure Python one.

`wsop/load/_hot.c` is a step-for-step twin of the direct-message loop of
`Pool._send_due` and of the fast frames of `Wire._read`, on the same objects and
calling the same ledger methods (see its header). It is built by `pip install` when a
C compiler is at hand (setup.py; optional). Without it, or with `WSOP_PURE_LOADGEN=1`
in the environment, the Python loops run: same books, more CPU per message.
"""

from __future__ import annotations

import os
from types import ModuleType

from wsop.load.wire import Conn

PURE_ENV = "WSOP_PURE_LOADGEN"


def compiled() -> ModuleType | None:
    """The compiled loops, bound to `Conn`'s layout; None: run the Python ones."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    try:
        from wsop.load import _hot
    except ImportError:
        return None
    _hot.bind(Conn)
    return _hot
