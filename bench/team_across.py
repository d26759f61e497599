"""One team message to N connected members spread over two sidecars: all delivered?

Issue 10's acceptance case: a 10,000-member team across sidecars is delivered in full
(on 612a223 the other sidecar's members got nothing: their ids rode in one peer item
over the link's 64 KiB limit). Every member has a real WebSocket to its ring owner;
the sender's ack must say `delivered: N`, and every member must receive exactly one
copy.

    .venv/bin/python bench/team_across.py [--members 10000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import machine_note, private_redis, raise_fd_limit  # noqa: E402
from wsop.acl import bitmap, seed  # noqa: E402
from wsop.acl.dataset import TenantData  # noqa: E402
from wsop.acl.store import TenantStore  # noqa: E402
from wsop.local.redis_binary import free_port  # noqa: E402
from wsop.ring import build  # noqa: E402


def start_sidecars(redis_url: str, workdir: Path) -> tuple[list[subprocess.Popen[bytes]], dict]:
    ports = {name: free_port() for name in ("s0", "s1")}
    peers = ",".join(f"{n}=ws://127.0.0.1:{p}" for n, p in ports.items())
    procs = []
    for name, port in ports.items():
        log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "wsop.cli.main", "sidecar", "--name", name]
                + ["--port", str(port), "--peers", peers, "--redis", redis_url, "--insecure"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs, {n: f"ws://127.0.0.1:{p}" for n, p in ports.items()}


async def run(urls: dict[str, str], members: int) -> dict:
    ring = build("maglev", sorted(urls))
    deadline = time.monotonic() + 30
    while True:  # until both sidecars answer
        try:
            for url in urls.values():
                await (await connect(f"{url}/ws?tenant=t&user=0")).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    started = time.monotonic()
    sem = asyncio.Semaphore(200)

    async def open_one(user: int):
        async with sem:
            url = urls[ring.owner(("t", user))]
            return await connect(f"{url}/ws?tenant=t&user={user}", ping_interval=None)

    conns = await asyncio.gather(*(open_one(u) for u in range(members)))
    connected_s = time.monotonic() - started
    received = [0] * members

    async def reader(user: int, ws) -> None:
        try:
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "message":
                    received[user] += 1
        except Exception:
            return

    readers = [asyncio.ensure_future(reader(u, ws)) for u, ws in enumerate(conns[1:], 1)]
    sender = conns[0]
    sent = time.monotonic()
    await sender.send('{"type":"team","teams":["all"],"data":"to everyone","id":"t"}')
    ack = None
    while ack is None:
        frame = json.loads(await asyncio.wait_for(sender.recv(), 60))
        if frame["type"] == "ack":
            ack = frame
        elif frame["type"] == "message":
            received[0] += 1
    ack_s = time.monotonic() - sent
    settle = time.monotonic() + 10
    while sum(1 for n in received if n) < members and time.monotonic() < settle:
        await asyncio.sleep(0.1)
    for task in readers:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    per_sidecar = {n: sum(1 for u in range(members) if ring.owner(("t", u)) == n) for n in urls}
    return {
        "members": members,
        "per_sidecar": per_sidecar,
        "connect_s": round(connected_s, 2),
        "ack": ack,
        "ack_s": round(ack_s, 3),
        "received_once": sum(1 for n in received if n == 1),
        "missing": sum(1 for n in received if n == 0),
        "duplicated": sum(1 for n in received if n > 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    raise_fd_limit()
    with private_redis() as (client, info), tempfile.TemporaryDirectory() as tmp:
        team = bitmap.encode(list(range(args.members)))
        seed.seed(TenantStore(client), [TenantData("t", {"all": team}, b"", args.members, 0)], 0)
        procs, urls = start_sidecars(f"redis://127.0.0.1:{info.port}/0", Path(tmp))
        try:
            result = asyncio.run(run(urls, args.members))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=20)
    result["machine"] = machine_note()
    result["command"] = f".venv/bin/python bench/team_across.py --members {args.members}"
    ok = (
        result["ack"]["delivered"] == args.members
        and result["received_once"] == args.members
        and not result["ack"].get("undelivered")
    )
    result["complete"] = ok
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"team of {args.members:,} connected members over 2 sidecars {result['per_sidecar']}")
        print(f"connected in {result['connect_s']} s; ack {result['ack']}", end="")
        print(f" after {result['ack_s']} s")
        print(
            f"received exactly once: {result['received_once']:,}, missing: "
            f"{result['missing']:,}, duplicated: {result['duplicated']:,} -> "
            + ("complete" if ok else "INCOMPLETE")
        )
        print(f"reproduce: {result['command']}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
