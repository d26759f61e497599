"""How fast presence heals: a real Redis restart (empty data) and a kill -9'd sidecar.

    .venv/bin/python bench/presence_heal.py                        # the defaults: 2 s / 10 s
    .venv/bin/python bench/presence_heal.py --heartbeat 0.5 --lease 3 --clients 600 --json

Starts its own redis-server and N real sidecar processes, connects C clients of one
tenant spread over them (one team with every user), then measures:

  restart   the redis-server is stopped and a fresh one started on the same port with an
            empty data dir; the team is re-seeded (the app's job) and one team message is
            sent at once: `first_ack_s` is its ack latency (it waits for re-assertion),
            `delivered` its count; `online_back_s` when every online bit was back.
  kill      sidecar s0 gets SIGKILL and a replacement starts under another name:
            `offline_s` until the last of s0's users is offline (bound: lease + heartbeat).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from tests.stack_helpers import Sidecars, client, recv_json  # noqa: E402
from wsop.acl import bitmap, keys, seed  # noqa: E402
from wsop.acl.dataset import TenantData  # noqa: E402
from wsop.acl.store import TenantStore  # noqa: E402
from wsop.local.redis_binary import free_port, start_server  # noqa: E402


def seed_team(url: str, users: list[int]) -> None:
    r = redis.Redis.from_url(url)
    data = TenantData("A", {"all": bitmap.encode(users)}, None, len(users), 0)
    seed.seed(TenantStore(r), [data], False)
    r.close()


def bitcount(url: str) -> int:
    r = redis.Redis.from_url(url)
    try:
        return int(r.bitcount(keys.online_key("A")))
    finally:
        r.close()


def wait(check, timeout: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            return float("nan")
        time.sleep(0.02)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heartbeat", type=float, default=2.0)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--sidecars", type=int, default=3)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    flags = ["--heartbeat", str(args.heartbeat), "--lease", str(args.lease)]
    users = list(range(args.clients))
    root = Path(tempfile.mkdtemp(prefix="wsop-heal-"))
    port = free_port()
    server = start_server(port, root / "data-0")
    url = f"redis://127.0.0.1:{port}/0"
    stack = Sidecars(url, root / "members.json", {})
    conns = []
    result: dict[str, object] = {"heartbeat_s": args.heartbeat, "lease_s": args.lease}
    try:
        seed_team(url, users)
        names = [f"s{i}" for i in range(args.sidecars)]
        for name in names:
            stack.start(name, root, flags)
        stack.write_members()
        time.sleep(1.0)
        procs = [stack.procs[n] for n in names]
        conns = [client(procs[u % len(procs)].url, "A", u) for u in users]
        wait(lambda: bitcount(url) == len(users), 10)

        server.terminate()
        server.wait(timeout=10)
        server = start_server(port, root / "data-1")
        restarted = time.monotonic()
        seed_team(url, users)
        sender = conns[1]  # on s1: s0 is killed below
        sender.send('{"type":"team","teams":["all"],"data":1,"id":"r"}')
        while (frame := recv_json(sender, timeout=30))["type"] != "ack":
            pass
        first_ack = time.monotonic() - restarted
        wait(lambda: bitcount(url) == len(users), 30)
        result["restart"] = {
            "first_ack_s": round(first_ack, 3),
            "delivered": frame["delivered"],
            "online_back_s": round(time.monotonic() - restarted, 3),
        }
        time.sleep(args.lease + args.heartbeat)  # the reapers' gate: one lease of beats

        killed = [u for u in users if u % len(procs) == 0]
        procs[0].proc.kill()
        procs[0].proc.wait()
        killed_at = time.monotonic()
        del stack.procs["s0"]
        stack.start(f"s{args.sidecars}", root, flags)
        stack.write_members()
        others = len(users) - len(killed)
        wait(lambda: bitcount(url) <= others, args.lease * 3)
        result["kill"] = {
            "offline_s": round(time.monotonic() - killed_at, 3),
            "bound_s": args.lease + args.heartbeat,
            "online": bitcount(url),
            "expected_online": others,
        }
    finally:
        for ws in conns:
            ws.close()
        stack.stop_all()
        server.terminate()
        server.wait(timeout=10)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
