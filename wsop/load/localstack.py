"""CLI side of `--local`: find or start the local stack, seed the plan's tenants, stop it.

Plain Python (no gevent). The stack is started through the library (`wsop up --detach
--insecure` in effect) and stopped only if this run started it, so a developer's own
stack survives a load test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsop.errors import BackendUnavailable
from wsop.load.profiles import LoadPlan


@dataclass
class LocalStack:
    url: str  # the LB's ws:// base url
    redis_url: str
    secret: str | None
    started: bool
    sidecar_pids: dict[str, int]

    def stop(self) -> None:
        if self.started:
            from wsop.local import stack

            stack.down()


def ensure(sidecars: int = 2, redis_url: str | None = None, history: str = "memory") -> LocalStack:
    """The running local stack, or a new insecure one on a free port (its sidecars with
    `--history history`; a running stack keeps its own)."""
    from wsop.local import stack, stack_file
    from wsop.local.redis_binary import free_port

    started = False
    try:
        stack.status()
    except stack.StackNotRunning:
        stack.up(
            sidecars=sidecars,
            port=free_port(),
            insecure=True,
            redis_url=redis_url,
            history=history,
        )
        started = True
    record = stack_file.load()
    if record is None:
        raise BackendUnavailable("the local stack vanished right after starting")
    return LocalStack(
        url=record.lb.url,
        redis_url=record.redis_url,
        secret=record.secret,
        started=started,
        sidecar_pids={s.name: s.pid for s in record.sidecars},
    )


def seed(plan: LoadPlan, redis_url: str | None) -> dict[str, Any]:
    """`wsop seed synthetic … --online 0 --replace` for exactly the plan's tenants.

    Also drops the tenants' per-sidecar presence bitmaps: the seed empties the online
    bitmap, and the load-test tenants have no clients between runs, so nobody holding
    anybody is the truth.
    """
    from wsop.acl import seed as seeding
    from wsop.acl.presence import reset_presence
    from wsop.acl.store import TenantStore
    from wsop.acl.synthetic import generate
    from wsop.backend import connect
    from wsop.load.layout import synthetic_spec

    client = connect(redis_url)
    result = seeding.seed(TenantStore(client), generate(synthetic_spec(plan)), True).to_json()
    for tenant in plan.tenant_names():
        reset_presence(client, tenant)
    return result


def reseed_acl(plan: LoadPlan, redis_url: str | None) -> dict[str, Any]:
    """The plan's teams again, presence left alone: what the load test does right after
    `restart-redis` wiped everything.

    A chaos run's subject is the stack's recovery, not the operator's: after a real
    Redis loss the ACL comes back from its source of truth (a re-seed, a restore), and
    that is outside the stack. So the load test re-seeds the ACL itself, at once, and
    what it then measures is how the stack copes with the rest: connections to Redis
    broken and presence gone. The online bitmaps are not touched (`online=None`): the
    sidecars must re-assert the presence of the clients they hold, and a seed that
    wrote them would hide whether they do.
    """
    from dataclasses import replace

    from wsop.acl import seed as seeding
    from wsop.acl.store import TenantStore
    from wsop.acl.synthetic import generate
    from wsop.backend import connect
    from wsop.load.layout import synthetic_spec

    tenants = [replace(t, online=None, online_count=0) for t in generate(synthetic_spec(plan))]
    return seeding.seed(TenantStore(connect(redis_url)), tenants, True).to_json()
