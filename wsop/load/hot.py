"""Which twin runs the generator's hot loops: the compiled one or the pure Python one.

`wsop/load/_hot.c` is a step-for-step twin of the direct-message loop of
`Pool._send_due`, of the fast frames of `Wire._read` and of the loop of
`Ledger.settle`, on the same objects; it books the common cases into the ledger's own
structures and calls the Python methods for everything else (see its header). It is
built by `pip install` when a C compiler is at hand (setup.py; optional). Without it,
or with `WSOP_PURE_LOADGEN=1` in the environment when wsop is imported, the Python
loops run: the same books,
more CPU per message.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

PURE_ENV = "WSOP_PURE_LOADGEN"


def _module() -> ModuleType | None:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    try:
        from wsop.load import _hot
    except ImportError:
        return None
    return _hot


_hot = _module()  # chosen once, at import: the ledger and the pool run the same twin
_bound = False

settle_span: Any = _hot.settle_span if _hot is not None else None
"""`Ledger.settle`'s loop, compiled, or None."""


def compiled() -> ModuleType | None:
    """The compiled loops, bound to `Conn`'s layout; None: run the Python ones."""
    global _bound
    if _hot is not None and not _bound:
        from wsop.load.wire import Conn  # wire imports the ledger, which imports this

        _hot.bind(Conn)
        _bound = True
    return _hot
