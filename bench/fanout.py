"""p99 latency of unrelated direct messages while a huge team message is fanned out.

One sidecar, one tenant whose team has N online members (default 1M; three of them
connected, the rest reported undelivered). A client pair exchanges direct messages every
2 ms and times each ack; in the second phase a third client sends a team message to the
whole team once a second. The figure that matters is the ratio of the direct messages'
p99 with the team traffic to their p99 without it, in the same run. Direct messages
are sent on a fixed schedule (open loop), so a stall is counted in every message it
delays.

    .venv/bin/python bench/fanout.py [--members 1000000] [--seconds 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import machine_note, percentile_ms, private_redis  # noqa: E402
from wsop.acl import bitmap, seed  # noqa: E402
from wsop.acl.dataset import TenantData  # noqa: E402
from wsop.acl.store import TenantStore  # noqa: E402
from wsop.local.redis_binary import free_port  # noqa: E402
from wsop.sidecar.delivery import MEMBERSHIP_GRACE_S  # noqa: E402


def start_sidecar(redis_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    log = open(workdir / "sidecar.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsop.cli.main", "sidecar", "--name", "s0", "--port", str(port)]
        + ["--peers", f"s0={url}", "--redis", redis_url, "--insecure"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            connect(f"{url}/ws?tenant=big&user=1", legacy=True).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the sidecar did not start; log: {workdir / 'sidecar.log'}")


def direct_latencies(url: str, seconds: float, team: threading.Event | None) -> dict:
    """Direct messages a→b every 2 ms for `seconds`; with `team`, a team message to
    everyone once a second meanwhile. Returns latencies (ns) and team ack times (s)."""
    a = connect(f"{url}/ws?tenant=big&user=1", legacy=True)
    b = connect(f"{url}/ws?tenant=big&user=2", legacy=True)
    big = connect(f"{url}/ws?tenant=big&user=0", max_size=None, legacy=True)
    samples: list[int] = []
    team_acks: list[float] = []
    stop = threading.Event()

    def teams() -> None:
        n = 0
        while not stop.is_set():
            sent = time.monotonic()
            big.send(json.dumps({"type": "team", "teams": ["all"], "data": n, "id": f"t{n}"}))
            while True:
                frame = json.loads(big.recv(timeout=60))
                if frame["type"] == "ack":
                    team_acks.append(time.monotonic() - sent)
                    break
            n += 1
            stop.wait(max(0.0, 1.0 - (time.monotonic() - sent)))

    sender = threading.Thread(target=teams) if team is not None else None
    if sender is not None:
        sender.start()
        time.sleep(0.1)
    # Open loop: sends keep their schedule whatever the acks do, and each latency runs
    # from the scheduled send, so a stall counts once per message it delays (a closed
    # loop would count a 1 s freeze as one slow sample: coordinated omission).
    acked: dict[str, int] = {}

    def read_acks() -> None:
        while True:
            try:
                frame = json.loads(a.recv(timeout=30))
            except (TimeoutError, OSError):
                return
            if frame["type"] == "ack":
                acked[frame["id"]] = time.perf_counter_ns()

    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    scheduled: dict[str, int] = {}
    interval_ns = 2_000_000
    begin = time.perf_counter_ns()
    total = int(seconds * 1e9 / interval_ns)
    for seq in range(total):
        due = begin + seq * interval_ns
        delay = due - time.perf_counter_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        scheduled[str(seq)] = due
        a.send(json.dumps({"type": "direct", "to": 2, "data": seq, "id": str(seq)}))
    deadline = time.monotonic() + 30
    while len(acked) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    samples.extend(acked[k] - due for k, due in scheduled.items() if k in acked)
    stop.set()
    if sender is not None:
        sender.join()
    for ws in (a, b, big):
        ws.close()
    return {"samples": samples, "team_acks": team_acks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with private_redis() as (client, _info), tempfile.TemporaryDirectory() as tmp:
        members = bitmap.encode(list(range(args.members)))
        data = TenantData("big", {"all": members}, members, args.members, args.members)
        seed.seed(TenantStore(client), [data], False)
        url = f"redis://127.0.0.1:{_info.port}/0"
        proc, ws_url = start_sidecar(url, Path(tmp))
        try:
            time.sleep(MEMBERSHIP_GRACE_S)  # then unknown recipients are reported at once
            quiet = direct_latencies(ws_url, args.seconds, None)
            busy = direct_latencies(ws_url, args.seconds, threading.Event())
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    rows = {}
    for name, run in (("alone", quiet), ("with team", busy)):
        rows[name] = {
            "messages": len(run["samples"]),
            "p50_ms": round(percentile_ms(run["samples"], 50) or 0, 2),
            "p99_ms": round(percentile_ms(run["samples"], 99) or 0, 2),
            "max_ms": round(max(run["samples"]) / 1e6, 3),
        }
    acks = busy["team_acks"]
    result = {
        "members": args.members,
        "machine": machine_note(),
        "direct": rows,
        "p99_ratio": round(rows["with team"]["p99_ms"] / rows["alone"]["p99_ms"], 2),
        "team_messages": len(acks),
        "team_ack_s": {"min": round(min(acks), 3), "max": round(max(acks), 3)} if acks else None,
        "command": f".venv/bin/python bench/fanout.py --members {args.members}",
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"fan-out of {args.members:,} recipients · {result['machine']}")
    print(f"{'direct messages':<18}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name, row in rows.items():
        print(
            f"{name:<18}{row['messages']:>8}{row['p50_ms']:>10}{row['p99_ms']:>10}"
            f"{row['max_ms']:>10}"
        )
    print(f"p99 with / without team traffic: {result['p99_ratio']}×")
    if acks:
        print(f"{len(acks)} team messages, acked in {min(acks):.2f}–{max(acks):.2f} s")
    print(f"reproduce: {result['command']}")


if __name__ == "__main__":
    main()
