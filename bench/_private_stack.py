"""A private wsop stack for a benchmark: `wsop up` in a temp state dir, read back.

Never the developer's stack (its own WSOP_STATE_DIR and Redis URL), always brought down
(`wsop down`, else its pids are stopped), and run with the per-connection message quota
lifted (a benchmark measures capacity). Used by bench/stack.py, peers.py, history.py
and trunks.py; `seed_team` writes one tenant with one team as `wsop seed` would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from _common import stop_pids

from wsop.acl import bitmap, seed
from wsop.acl.dataset import TenantData
from wsop.acl.store import TenantStore

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stack:
    """A private `wsop up` stack: its members file, read back for urls and pids."""

    env: dict[str, str]
    state: Path
    lb_url: str = ""
    algo: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    def wsop(self, *args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "wsop.cli.main", *args, "--json"],
            capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"wsop {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
        return json.loads(done.stdout)

    def up(self, sidecars: int, redis_url: str, history: str = "memory") -> None:
        """A benchmark measures capacity, so the per-connection message quota (1,000/s by
        default, burst 2,000) is lifted: once the sidecars got faster, row (b)'s local
        pairs outran it and had messages refused `rate_limited`."""
        port = free_port()
        quotas = self.state / "bench-quotas.json"
        quotas.write_text(json.dumps({"default": {"messages_per_second": 0}}))
        self.wsop("up", "--detach", "--insecure", "--sidecars", str(sidecars),
                  "--port", str(port), "--redis", redis_url, "--history", history,
                  "--quotas", str(quotas))  # fmt: skip
        doc = json.loads((self.state / "stack.json").read_text())
        self.lb_url, self.algo = doc["lb"]["url"], doc["algo"]
        self.pids = {"lb": doc["lb"]["pid"], **{s["name"]: s["pid"] for s in doc["sidecars"]}}

    @property
    def sidecar_pids(self) -> dict[str, int]:
        return {k: v for k, v in self.pids.items() if k != "lb"}


@contextmanager
def private_stack(sidecars: int, redis_url: str, history: str = "memory") -> Iterator[Stack]:
    """`wsop up` in a temp WSOP_STATE_DIR (never the developer's stack), `wsop down` after."""
    with tempfile.TemporaryDirectory(prefix="wsop-bench-stack-") as state:
        env = {k: v for k, v in os.environ.items() if k not in ("WSOP_SECRET", "WSOP_REDIS_URL")}
        env["WSOP_STATE_DIR"] = state
        stack = Stack(env, Path(state))
        try:
            stack.up(sidecars, redis_url, history)
            yield stack
        finally:
            if (Path(state) / "stack.json").exists():
                try:
                    stack.wsop("down")
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"warning: {exc}; stopping the stack's pids directly", file=sys.stderr)
                    stop_pids(list(stack.pids.values()))


def free_port() -> int:
    from wsop.local.redis_binary import free_port as pick

    return pick()


def seed_team(r: redis.Redis, tenant: str, team: str, members: range) -> None:
    """One tenant with one team, as `wsop seed` writes it (staged, then swapped in)."""
    data = TenantData(
        tenant=tenant,
        teams={team: bitmap.encode(list(members))},
        online=b"",
        memberships=len(members),
        online_count=0,
    )
    seed.seed(TenantStore(r), [data], True)
