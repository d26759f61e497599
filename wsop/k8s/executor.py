"""Gather where connections sit, then apply a plan's moves at a bounded rate.

Both steps talk to sidecars only through a `MoveTarget` — two calls, the sidecar's
`/connections` and `/move` admin endpoints — so the Kubernetes path (pods/proxy through
the API server, `wsop.k8s.proxy`) and the local path (plain HTTP to the local stack,
`wsop.k8s.local`) share every decision made here:

- a member whose admin endpoint fails (unreachable, 5xx, 401, 404, not JSON) is
  *skipped*: reported with the reason, its remaining moves not attempted, the run goes
  on; a single move the sidecar refuses (another 4xx) is an error for that move only;
- a failure of the API server itself (unreachable, RBAC 403) is a `WsopError`: gather
  lets it propagate (there is nothing to plan with), execute stops and reports what was
  already done (`aborted`), because half a rebalance is still a result.

The `/move` contract (the sidecar implements it):
`GET /move?tenant=T&user=U&to=MEMBER` with the admin token → `200 {"moved": n}`, n ≥ 0
(0 when the user has no connection there any more). GET, not POST: the sidecar's HTTP
layer is websockets' handshake parser, which takes no request body.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from wsop.errors import UsageError, WsopError
from wsop.k8s.plan import Holding, Move


class MemberFailed(Exception):
    """A member's admin endpoint failed: skip the member, report why, keep going."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"{member}: {reason}")
        self.member = member
        self.reason = reason


class MoveRefused(Exception):
    """The sidecar answered, but refused this one move (a 4xx): an error for the move."""


class MoveTarget(Protocol):
    """How the executor reaches a sidecar's admin endpoints."""

    def connections(self, member: str) -> Any:
        """The member's `/connections` JSON document (`MemberFailed` if it fails)."""
        ...

    def move(self, member: str, tenant: str, user: str | int, to: str) -> int:
        """Ask `member` to move `(tenant, user)` to `to`; how many connections moved."""
        ...


class SidecarAdmin:
    """A `MoveTarget` over one transport: subclasses say how to GET a member's admin path."""

    def _get(self, member: str, path: str, params: list[tuple[str, str]]) -> Any:
        raise NotImplementedError

    def connections(self, member: str) -> Any:
        return self._get(member, "/connections", [])

    def move(self, member: str, tenant: str, user: str | int, to: str) -> int:
        params = [("tenant", tenant), ("user", str(user)), ("to", to)]
        return parse_moved(self._get(member, "/move", params), member)


def sidecar_answer(member: str, path: str, status: int, body: bytes) -> Any:
    """The JSON a sidecar answered, or the right exception for its failure."""
    text = body.decode(errors="replace").strip()
    line = " ".join(text.splitlines()[:1])[:200]
    if status == 401:
        raise MemberFailed(
            member,
            f"{path}: admin token rejected (401 {line}); set --admin-token or WSOP_ADMIN_TOKEN",
        )
    if status == 404 and path == "/move" and text.startswith("{"):
        raise MoveRefused(f"HTTP 404 {line}")  # JSON: the sidecar does not know `to` (yet)
    if status == 404:
        raise MemberFailed(member, f"{path}: 404 {line or 'not found'}")
    if status >= 500:
        raise MemberFailed(member, f"{path}: HTTP {status} {line}".rstrip())
    if status >= 400:
        if path == "/move":
            raise MoveRefused(f"HTTP {status} {line}".rstrip())
        raise MemberFailed(member, f"{path}: HTTP {status} {line}".rstrip())
    if status != 200:
        raise MemberFailed(member, f"{path}: unexpected HTTP {status}")
    try:
        return json.loads(text)
    except ValueError:
        raise MemberFailed(member, f"{path}: answered with something that is not JSON") from None


def parse_connections(doc: Any, member: str) -> list[Holding]:
    """`{"name", "connections", "users": [{"tenant", "user", "count"}]}` → holdings."""
    users = doc.get("users") if isinstance(doc, dict) else None
    if not isinstance(users, list):
        raise MemberFailed(member, "/connections: no 'users' list in the answer")
    holdings = []
    for i, row in enumerate(users):
        ok = (
            isinstance(row, dict)
            and isinstance(row.get("tenant"), str)
            and isinstance(row.get("user"), str | int)
            and type(row.get("count", 1)) is int
            and row.get("count", 1) >= 0
        )
        if not ok:
            raise MemberFailed(member, f"/connections: malformed users[{i}]: {row!r}"[:200])
        holdings.append(Holding(member, row["tenant"], row["user"], row.get("count", 1)))
    return holdings


def parse_moved(doc: Any, member: str) -> int:
    moved = doc.get("moved") if isinstance(doc, dict) else None
    if type(moved) is not int or moved < 0:
        raise MemberFailed(member, f"/move: answer has no 'moved' count: {doc!r}"[:200])
    return moved


@dataclass
class Gathered:
    """Where connections sit, per member that answered; `skipped` = member -> reason."""

    holdings: list[Holding] = field(default_factory=list)
    connections: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def gather(target: MoveTarget, members: Iterable[str], workers: int = 8) -> Gathered:
    """Ask every member for its connections (in parallel); skip and report failures."""
    names = list(members)
    result = Gathered()

    def ask(name: str) -> list[Holding] | MemberFailed:
        try:
            return parse_connections(target.connections(name), name)
        except MemberFailed as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(names) or 1))) as pool:
        answers = list(pool.map(ask, names))  # a WsopError (API down, RBAC) propagates
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, MemberFailed):
            result.skipped[name] = answer.reason
        else:
            result.holdings += answer
            result.connections[name] = sum(h.count for h in answer)
    return result


ProgressFn = Callable[[int, int, Move, str | None], None]
"""progress(done, total, move, error or None) after every move (attempted or not)."""


@dataclass
class Execution:
    """What a run did: `moved` moves succeeded, carrying `moved_connections`."""

    moved: int = 0
    moved_connections: int = 0
    not_attempted: int = 0
    skipped_pods: dict[str, str] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    aborted: str | None = None
    succeeded: list[Move] = field(default_factory=list, repr=False)


def execute(
    moves: Iterable[Move],
    target: MoveTarget,
    rate: float,
    progress: ProgressFn | None = None,
    skipped: dict[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], str | None] | None = None,
) -> Execution:
    """Apply `moves` in order, at most `rate` per second, through `target`.

    `skipped` seeds the members already known to fail (from `gather`): moves from or to
    them are not attempted. `stop`, asked before every move, returns why the run must
    end now (the watch-driven rebalancer lost its Lease, or is shutting down) or None;
    the rest is then not attempted and `aborted` says why.
    """
    if not rate > 0:
        raise UsageError(f"--rate must be > 0 moves per second, got {rate}")
    listed = list(moves)
    run = Execution(skipped_pods=dict(skipped or {}))
    start = clock()
    sent = 0
    for done, mv in enumerate(listed, 1):
        error: str | None = None
        dead = next((m for m in (mv.source, mv.target) if m in run.skipped_pods), None)
        if run.aborted is None and stop is not None:
            run.aborted = stop()
        if run.aborted is not None:
            run.not_attempted += 1
            error = "not attempted: run aborted"
        elif dead is not None:
            run.not_attempted += 1
            error = f"not attempted: {dead} skipped"
        else:
            due = start + sent / rate
            wait = due - clock()
            if wait > 0:
                sleep(wait)
            sent += 1
            try:
                run.moved_connections += target.move(mv.source, mv.tenant, mv.user, mv.target)
                run.moved += 1
                run.succeeded.append(mv)
            except MemberFailed as exc:
                run.skipped_pods[exc.member] = exc.reason
                error = exc.reason
            except MoveRefused as exc:
                error = str(exc)
            except WsopError as exc:
                run.aborted = str(exc)
                run.not_attempted += 1
                error = str(exc)
            if error is not None:
                run.errors.append({**mv.to_json(), "error": error})
        if progress is not None:
            progress(done, len(listed), mv, error)
    return run
