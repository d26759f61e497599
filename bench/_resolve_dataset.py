"""The second part of bench/resolve.py: seed the design's 10M-user dataset with wsop's
own seeding (and as Redis SETs for comparison), timing it and reading Redis's memory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from _resolve_rows import sadd_chunked, set_key, set_online_key

from wsop.acl import bitmap, keys
from wsop.acl.dataset import TenantData
from wsop.acl.seed import seed
from wsop.acl.store import TenantStore
from wsop.acl.synthetic import SyntheticSpec, generate


class TimedIterator:
    """Wraps a generator and adds up the time spent producing items (numpy generation),
    so the seeding wall time can be split into generation and Redis writes."""

    def __init__(self, it: Iterator[TenantData]) -> None:
        self._it = it
        self.seconds = 0.0

    def __iter__(self) -> Iterator[TenantData]:
        while True:
            start = time.perf_counter()
            try:
                item = next(self._it)
            except StopIteration:
                self.seconds += time.perf_counter() - start
                return
            self.seconds += time.perf_counter() - start
            yield item


@dataclass
class DatasetResult:
    spec: dict[str, object]
    users_total: int
    payload_bytes: int
    used_memory_bytes: int
    seed_seconds: float
    generate_seconds: float
    team_key_strlen: int
    team_key_memory_usage: int
    keys: int
    sets: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return dict(vars(self))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def bench_dataset(client: redis.Redis, spec: SyntheticSpec, sets_budget_s: float) -> DatasetResult:
    """Seed with `seed(..., replace=False)` on an empty server; then the same data as SETs."""
    client.flushall()
    before = used_memory(client)
    timed = TimedIterator(generate(spec))
    result = seed(TenantStore(client), timed, replace=False)
    after = used_memory(client)
    first = f"{spec.tenant_prefix}0"
    team_key = keys.team_key(first, f"{spec.team_prefix}0")
    out = DatasetResult(
        spec={k: v for k, v in vars(spec).items() if k not in ("tenant_prefix", "team_prefix")},
        users_total=spec.tenants * spec.users,
        payload_bytes=result.bytes,
        used_memory_bytes=after - before,
        seed_seconds=result.seconds,
        generate_seconds=timed.seconds,
        team_key_strlen=int(client.strlen(team_key)),
        team_key_memory_usage=int(client.memory_usage(team_key) or 0),
        keys=int(client.dbsize()),
    )
    out.sets = bench_dataset_sets(client, spec, sets_budget_s)
    return out


def bench_dataset_sets(
    client: redis.Redis, spec: SyntheticSpec, budget_s: float
) -> dict[str, object]:
    """The same memberships as SETs, tenant by tenant, until done or out of budget.

    Only the SADD side is timed (bitmap decode + pipelined SADD), not the generation.
    When the budget runs out, time and memory are extrapolated linearly from the
    tenants done, and the result says so.
    """
    before = used_memory(client)
    spent = 0.0
    done = 0
    for data in generate(spec):
        start = time.perf_counter()
        items = [(set_key(data.tenant, t), bitmap.decode(b)) for t, b in data.teams.items()]
        items.append((set_online_key(data.tenant), bitmap.decode(data.online)))
        sadd_chunked(client, items)
        spent += time.perf_counter() - start
        done += 1
        if spent > budget_s and done < spec.tenants:
            break
    delta = used_memory(client) - before
    scale = spec.tenants / done
    return {
        "tenants_done": done,
        "extrapolated": done < spec.tenants,
        "used_memory_bytes": int(delta * scale),
        "seed_seconds": round(spent * scale, 2),
        "set_encoding": _text(
            client.object("encoding", set_key(f"{spec.tenant_prefix}0", "team-0"))
        ),
    }


# -- report ------------------------------------------------------------------------------
