"""Helpers shared by the benchmarks: a private redis-server and latency statistics.

A benchmark must never touch a developer's embedded Redis (its data, its memory
numbers), so each run starts its own throw-away server on a free port, the same way
the test fixtures do, and stops exactly that process when done.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from wsop.local.redis_binary import find_binary, free_port, start_server


@dataclass(frozen=True)
class ServerInfo:
    """What the numbers were measured on; printed in every report header."""

    binary: str
    version: str
    allocator: str
    port: int


@contextmanager
def private_redis() -> Iterator[tuple[redis.Redis, ServerInfo]]:
    """A fresh, persistence-free redis-server on loopback, stopped on exit.

    The client has no socket timeout: the slow baseline (a GETBIT loop in Lua) may
    legitimately block the server for many seconds per call.
    """
    with tempfile.TemporaryDirectory(prefix="wsop-bench-") as workdir:
        port = free_port()
        proc = start_server(port, Path(workdir), logfile=Path(workdir) / "redis.log")
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=None)
        try:
            server = client.info("server")
            memory = client.info("memory")
            info = ServerInfo(
                binary=find_binary(),
                version=str(server["redis_version"]),
                allocator=str(memory.get("mem_allocator", "?")),
                port=port,
            )
            yield client, info
        finally:
            client.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except Exception:
                proc.kill()
                proc.wait()


def machine_note() -> str:
    """CPU model and core count: latency numbers mean little without them."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


@dataclass(frozen=True)
class Latency:
    """Median and p95 of one measured call, in milliseconds."""

    median_ms: float
    p95_ms: float
    n: int

    def to_json(self) -> dict[str, float | int]:
        return {"median_ms": round(self.median_ms, 4), "p95_ms": round(self.p95_ms, 4), "n": self.n}


def summarize(samples_s: list[float]) -> Latency:
    arr = np.asarray(samples_s, dtype=np.float64) * 1000
    return Latency(float(np.median(arr)), float(np.percentile(arr, 95)), int(arr.size))


def time_calls(
    fn: Callable[[], object],
    iterations: int,
    budget_s: float,
    *,
    warmup: int = 1,
    min_iterations: int = 3,
) -> Latency:
    """Time `fn` up to `iterations` times, stopping early once `budget_s` is spent.

    The budget keeps the slow baseline from dominating the run time while the fast
    rows still get enough samples for a meaningful p95.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < iterations:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
        if len(samples) >= min_iterations and time.perf_counter() > deadline:
            break
    return summarize(samples)


def percentile_ms(samples_ns: list[int], q: float) -> float | None:
    """The q-th percentile of nanosecond samples, in ms (None without samples)."""
    if not samples_ns:
        return None
    return float(np.percentile(np.asarray(samples_ns, dtype=np.float64), q)) / 1e6


def proc_cpu_times(pid: int) -> tuple[float, float]:
    """(utime + stime, stime) of one process from /proc/<pid>/stat ((0, 0) once gone).

    Read from /proc rather than psutil so the number is exactly what the kernel
    charged the process, with no sampling of our own in between. stime alone is the
    kernel's share (syscalls, and on loopback TCP the receiving side's network stack,
    run in the sender's context).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[12]) / tick


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (see `proc_cpu_times`)."""
    return proc_cpu_times(pid)[0]


def proc_rss_bytes(pid: int) -> int:
    """VmRSS of one process from /proc/<pid>/status, in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def raise_fd_limit() -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE to the hard one and return (soft, hard).

    Called before any stack process is spawned, so `wsop up`'s children (which do not
    touch their limits) inherit it: the LB holds two sockets per client. The hard limit
    itself needs CAP_SYS_RESOURCE to raise, which a container usually lacks.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def proc_fd_limit(pid: int) -> int | None:
    """The soft 'Max open files' of a running process (/proc/<pid>/limits), to verify that
    a child really inherited the limit rather than assume it."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return None if value == "unlimited" else int(value)
    except OSError:
        pass
    return None


def proc_fd_count(pid: int) -> int:
    """Open file descriptors of a process right now (0 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def stop_pids(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM (then SIGKILL) exactly the processes a bench's stack started, by pid: the
    fallback when `wsop down` cannot run, so no private LB or sidecar is left behind."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(proc_rss_bytes(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if proc_rss_bytes(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def proc_cpu_ns(pid: int) -> int:
    """CPU time of all live threads of a process, in ns (/proc/<pid>/task/*/schedstat).

    The scheduler's own run-time accounting: nanosecond resolution where `/proc/<pid>/stat`
    counts 10 ms ticks, which matters for the short, lightly loaded windows of a
    fixed-rate run (0.2 s of CPU ± 10 ms a process). A thread that exits inside the
    window takes its time with it; the servers measured keep theirs (event loops, libuv
    and V8 pools, Redis' bio threads). Falls back to `stat` where schedstat is absent.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    total, seen = 0, False
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            seen = True
        except (OSError, ValueError, IndexError):
            continue
    return total if seen else int(proc_cpu_seconds(pid) * 1e9)
