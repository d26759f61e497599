"""The local stack: `wsop up/scale/status/down` as library calls returning result objects.

One LB and N sidecars, each its own process on loopback, all following one members
file (`wsop.local.stack_file`). Order matters and is kept here:

- up: sidecars first, then the members file, then the LB; done only when every
  /healthz answers and the LB reports the full membership (a client connecting right
  after `wsop up` returns is routed, not refused with 1013);
- scale down: drop sidecars from the members file first (LB and peers stop routing to
  them), then SIGTERM them (their clients get 1012, reconnect, land on a live owner);
- down: LB first (no new clients), then the sidecars; then the file goes.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from wsop.checks import check_history_backend
from wsop.errors import BackendUnavailable, UsageError, WsopError
from wsop.local import stack_file, stack_proc
from wsop.local.limits import check_sidecar_count
from wsop.local.paths import StackNotRunning
from wsop.local.redis_binary import free_port
from wsop.local.stack_file import ProcRecord, StackRecord, sidecar_index

DEFAULT_PORT = 8765


@dataclass(frozen=True)
class MemberStatus:
    role: str
    name: str
    url: str
    pid: int
    alive: bool
    connections: int | None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "role"}


@dataclass(frozen=True)
class StackStatus:
    """What `up`, `scale` and `status` report; the table and `--json` both read this."""

    lb: MemberStatus
    sidecars: list[MemberStatus]
    algo: str
    insecure: bool
    redis_url: str
    members_file: str
    ca_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "lb": self.lb.to_json(),
            "sidecars": [s.to_json() for s in self.sidecars],
            "algo": self.algo,
            "insecure": self.insecure,
            "redis_url": self.redis_url,
            "members_file": self.members_file,
            "tls": self.ca_file is not None,
            "ca_file": self.ca_file,
            **self.extra,
        }


# --- helpers --------------------------------------------------------------------------


def _running() -> StackRecord | None:
    """The members file if any process it names is still ours and alive."""
    return stack_proc.running_record()


def _require_running() -> StackRecord:
    record = _running()
    if record is None:
        raise StackNotRunning()
    return record


def _child_env(record: StackRecord) -> dict[str, str]:
    env = {"WSOP_ADMIN_TOKEN": record.admin_token}
    if record.secret:
        env["WSOP_SECRET"] = record.secret
    return env


def _start_sidecar(
    record: StackRecord, name: str, taken: set[int]
) -> tuple[ProcRecord, subprocess.Popen[bytes]]:
    port = free_port()
    while port in taken:
        port = free_port()
    taken.add(port)
    argv = [
        *stack_proc.sidecar_prefix(),
        *("--name", name, "--host", stack_proc.HOST, "--port", str(port)),
        *("--members-file", str(stack_file.members_path())),
        *("--redis", record.redis_url, "--algo", record.algo),
        *(["--insecure"] if record.insecure else []),
        *(["--quotas", record.quotas] if record.quotas else []),
        *("--history", record.history),
        *_tls_flags(record),
    ]
    proc = stack_proc.spawn(name, argv, _child_env(record))
    scheme = "wss" if record.ca_file else "ws"
    return ProcRecord(name, f"{scheme}://{stack_proc.HOST}:{port}", proc.pid), proc


def _issue_certificates() -> str:
    """A CA and a certificate for 127.0.0.1/localhost in the state dir; the CA's path."""
    from wsop.tls import issue

    directory = stack_file.members_path().parent / "tls"
    issue(directory, ["127.0.0.1", "localhost"], "local stack", days=30)
    return str(directory / "ca.crt")


def _tls_flags(record: StackRecord) -> list[str]:
    if record.ca_file is None:
        return []
    directory = Path(record.ca_file).parent
    return [
        *("--certfile", str(directory / "tls.crt"), "--keyfile", str(directory / "tls.key")),
        *("--ca", record.ca_file),
    ]


def _status(record: StackRecord, connections: bool = True) -> StackStatus:
    def one(role: str, proc: ProcRecord) -> MemberStatus:
        is_alive = stack_proc.alive(proc)
        count = None
        if connections and is_alive:
            payload = stack_proc.admin_get(proc, "/connections", record.admin_token, record.ca_file)
            if isinstance(payload, dict) and isinstance(payload.get("connections"), int):
                count = payload["connections"]
        return MemberStatus(role, proc.name, proc.url, proc.pid, is_alive, count)

    return StackStatus(
        lb=one("lb", record.lb),
        sidecars=[one("sidecar", s) for s in record.sidecars],
        algo=record.algo,
        insecure=record.insecure,
        redis_url=record.redis_url,
        members_file=str(stack_file.members_path()),
        ca_file=record.ca_file,
    )


# --- the operations -------------------------------------------------------------------


def up(
    sidecars: int = 2,
    port: int = DEFAULT_PORT,
    insecure: bool = False,
    algo: str | None = None,
    redis_url: str | None = None,
    quotas: Path | None = None,
    tls: bool = False,
    history: str = "memory",
    trunks: int | None = None,
) -> StackStatus:
    """Start Redis (embedded unless given), N sidecars and the LB; return once routable.
    `quotas`: a quotas file for every sidecar (checked here first). `tls`: wss:// all the
    way — the LB for clients, the sidecars for the LB and each other — with a certificate
    for 127.0.0.1 and localhost from a CA made for this stack (`ca_file` in its record).
    `history`: every sidecar's `--history` (memory, redis or off). `trunks`: the LB's
    `--trunks` (None: its default, or `WSOP_LB_TRUNKS`)."""
    from wsop.auth import SECRET_ENV
    from wsop.local.embedded import resolve_url
    from wsop.ring import DEFAULT_ALGORITHM, check_routing_algorithm
    from wsop.trunk import check_trunks

    check_sidecar_count(sidecars)
    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be 1-65535, got {port}")
    algo = algo or DEFAULT_ALGORITHM
    check_routing_algorithm(algo)
    if quotas is not None:
        from wsop.quotas import Quotas

        Quotas.load(quotas)  # a bad file fails here, not in every sidecar
    check_history_backend(history)
    if trunks is not None:
        check_trunks(trunks)
    with stack_file.locked():
        running = _running()
        if running is not None:
            raise WsopError(
                f"a local stack is already running (lb {running.lb.url}, "
                f"{len(running.sidecars)} sidecars); stop it with `wsop down`"
            )
        stack_file.remove()  # stale file from a crashed stack, if any
        if not stack_proc.port_free(port):
            raise WsopError(f"port {port} is already in use; choose another with --port")
        secret = os.environ.get(SECRET_ENV) or (None if insecure else secrets.token_urlsafe(32))
        scheme = "wss" if tls else "ws"
        record = StackRecord(
            algo=algo,
            insecure=insecure,
            redis_url=resolve_url(redis_url),
            admin_token=secrets.token_urlsafe(32),
            secret=secret,
            lb=ProcRecord("lb", f"{scheme}://{stack_proc.HOST}:{port}", 0),
            quotas=str(quotas.resolve()) if quotas is not None else None,
            ca_file=_issue_certificates() if tls else None,
            history=history,
        )
        children: list[tuple[ProcRecord, subprocess.Popen[bytes]]] = []
        try:
            taken = {port}
            for i in range(sidecars):  # appended as started: an interrupt stops them all
                with stack_proc.interrupts_deferred():
                    children.append(_start_sidecar(record, f"s{i}", taken))
            record = record.with_sidecars([r for r, _ in children])
            stack_file.save(record)
            argv = [
                *stack_proc.wsop_command("lb"),
                *("--host", stack_proc.HOST, "--port", str(port), "--algo", algo),
                *("--members-file", str(stack_file.members_path())),
                *(["--insecure"] if insecure else []),
                *(["--trunks", str(trunks)] if trunks is not None else []),
                *_tls_flags(record),
            ]
            with stack_proc.interrupts_deferred():
                lb_proc = stack_proc.spawn("lb", argv, _child_env(record))
                record = replace(record, lb=replace(record.lb, pid=lb_proc.pid))
                children.append((record.lb, lb_proc))
            stack_file.save(record)
            stack_proc.wait_healthy(children, ca=record.ca_file)
            stack_proc.wait_members(record)
        except BaseException:
            with stack_proc.interrupts_deferred():  # a second Ctrl-C must not cut it short
                stack_proc.terminate([r for r, _ in children], timeout=5)
                stack_file.remove()
            raise
        return _status(record)


def _require_alive(procs: list[ProcRecord]) -> None:
    """Refuse a scale whose new membership could never settle: a process it keeps is
    dead (`kill -9`, a crash), so it would answer no /healthz, and waiting 30 s for it
    would end in a failure that left the new sidecars half-added."""
    dead = [p for p in procs if not stack_proc.alive(p)]
    if dead:
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in dead)
        raise BackendUnavailable(
            f"{names} of the local stack {'is' if len(dead) == 1 else 'are'} not running, "
            "so no new membership can settle; nothing was changed (restart the stack: "
            "`wsop down`, then `wsop up`)"
        )


def scale(sidecars: int) -> StackStatus:
    """Add sidecars s{k} (lowest free k) or stop the highest-numbered ones. Either the
    new membership settles or nothing changes: a dead kept process refuses it up front,
    and sidecars added to a membership that does not settle are removed and stopped."""
    check_sidecar_count(sidecars)
    with stack_file.locked():
        record = _require_running()
        current = sorted(record.sidecars, key=lambda s: (sidecar_index(s.name), s.name))
        if sidecars > len(current):
            _require_alive([record.lb, *current])
            used = {sidecar_index(s.name) for s in current}
            free = (k for k in range(sidecars + len(used) + 1) if k not in used)
            names = [f"s{next(free)}" for _ in range(sidecars - len(current))]
            taken = {record.lb.port, *(s.port for s in current)}
            new: list[tuple[ProcRecord, subprocess.Popen[bytes]]] = []
            try:
                for name in names:
                    with stack_proc.interrupts_deferred():
                        new.append(_start_sidecar(record, name, taken))
                stack_proc.wait_healthy(new, ca=record.ca_file)
            except BaseException:
                with stack_proc.interrupts_deferred():
                    stack_proc.terminate([r for r, _ in new], timeout=5)
                raise
            before, record = record, record.with_sidecars([*current, *(r for r, _ in new)])
            stack_file.save(record)
            try:
                stack_proc.wait_members(record)
            except BaseException as exc:
                with stack_proc.interrupts_deferred():  # back to the membership before
                    stack_file.save(replace(before, version=record.version + 1))
                    stack_proc.terminate([r for r, _ in new], timeout=5)
                if isinstance(exc, BackendUnavailable):
                    added = ", ".join(r.name for r, _ in new)
                    raise BackendUnavailable(f"{exc}; stopped {added} again") from None
                raise
        elif sidecars < len(current):
            keep, drop = current[:sidecars], current[sidecars:]
            _require_alive(keep)
            record = record.with_sidecars(keep)
            stack_file.save(record)
            if stack_proc.alive(record.lb):
                stack_proc.wait_members(record)
                _drain(record, drop)
            stack_proc.terminate(drop)
        return _status(record)


DRAIN_TIMEOUT_S = 15.0


def _drain(record: StackRecord, drop: list[ProcRecord]) -> None:
    """Move the clients of the sidecars about to stop, live, onto the ones kept (each
    sidecar's `/drain`), and wait until they hold none: a scale-down then closes no
    client. Whatever is still connected at the timeout gets the usual 1012 on SIGTERM."""
    from wsop.drain import drain

    onto = [s.name for s in record.sidecars]
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    for proc in drop:
        try:
            wait = max(0.0, deadline - time.monotonic())
            drain(proc.http, record.admin_token, onto, wait, ca=record.ca_file)
        except WsopError:  # unreachable or refusing: the SIGTERM that follows still works
            continue


def status() -> StackStatus:
    """Who is running and how many connections each holds (from their /connections)."""
    return _status(_require_running())


def down() -> StackStatus:
    """SIGTERM the LB, then the sidecars; wait; remove the members file."""
    with stack_file.locked():
        record = stack_file.load()
        if record is None:
            raise StackNotRunning()
        before = _status(record, connections=False)
        if not (before.lb.alive or any(s.alive for s in before.sidecars)):
            stack_file.remove()  # a stale file: nothing to stop
            raise StackNotRunning()
        killed = stack_proc.terminate([record.lb])
        killed += stack_proc.terminate(record.sidecars)
        stack_file.remove()
        return replace(
            before,
            extra={
                "stopped": [m.name for m in [before.lb, *before.sidecars] if m.alive],
                "killed": killed,
            },
        )


def watch_foreground(poll_s: float = 0.5) -> None:
    """Block while the stack is up (the foreground `wsop up`); returns if it goes away."""
    while True:
        record = stack_file.load()
        if record is None or not stack_proc.alive(record.lb):
            return
        time.sleep(poll_s)
