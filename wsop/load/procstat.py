"""CPU seconds from /proc: a process's own, or a whole process tree's. Pure reads, no deps.

The load generator reports its own CPU share (was the generator the limit, or the
stack?) and the benchmarks charge each generator — ours, Artillery, k6 — for its
whole process tree (node and Go spawn helpers and threads). /proc counts every
thread of a process, the ZeroMQ threads of a locust worker included.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of one process (every thread); 0.0 if it is gone.

    Falls back to `time.process_time` for this process where /proc is missing.
    """
    fields = _stat(pid)
    if fields is None:
        return time.process_time() if pid == "self" else 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def system_seconds(pid: int | str = "self") -> float:
    """The kernel's part of `cpu_seconds` (syscalls: for a load generator, its sockets)."""
    fields = _stat(pid)
    return int(fields[12]) / _TICK if fields is not None else 0.0


def children(pid: int) -> list[int]:
    """Every live descendant of `pid` (by parent links in /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(entry.name)
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of `pid` and each live descendant, by pid.

    A caller sampling a tree over time keeps the last value seen per pid, so a helper
    that exited between samples still counts up to its last sample.
    """
    return {p: cpu_seconds(p) for p in (pid, *children(pid))}


def tree_system_seconds(pid: int) -> dict[int, float]:
    """`tree_cpu_seconds`, system time only."""
    return {p: system_seconds(p) for p in (pid, *children(pid))}
