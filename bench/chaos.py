"""Every chaos fault in one load test: what each one costs, window by window.

Runs `wsop loadtest --local --chaos SPEC` on a private stack (its own state dir and
embedded Redis, which `restart-redis` needs and which is stopped afterwards) with the
whole fault list:

    kill-sidecar@8s,restart-redis@16s,scale=4@24s,rebalance@28s,scale=2@36s,drain@44s

and prints one row per fault window (deliveries by class, reconnects and their p99)
and the run's reconnect p50/p99. A run with silent losses still prints everything
(the load test exits 1 for them; that is the finding, not a crash of the bench).

    .venv/bin/python bench/chaos.py                      # ~75 s at 500 msg/s
    .venv/bin/python bench/chaos.py --rate 2000 --workers 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = "kill-sidecar@8s,restart-redis@16s,scale=4@24s,rebalance@28s,scale=2@36s,drain@44s"
COLUMNS = (
    ("sent", "sent"), ("expected", "expect"), ("delivered", "deliv"), ("silent_loss", "silent"),
    ("reported_undelivered", "report"), ("lost_disconnected", "discon"),
    ("lost_unacked", "unack"), ("refused", "refuse"), ("duplicates", "dup"),
    ("cross_tenant", "xten"), ("reconnects", "recon"),
)  # fmt: skip


def wsop(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsop.cli.main", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wsop-bench-chaos-") as tmp:
        env = {**os.environ, "WSOP_STATE_DIR": tmp}
        env.pop("WSOP_REDIS_URL", None)
        argv = [
            "loadtest", "--local", "--rate", str(args.rate), "--duration", str(args.duration),
            "--workers", str(args.workers), "--sidecars", "2", "--chaos", args.spec, "--json",
            "--grace", str(args.grace), "--min-rate-ratio", "0.5",
        ]  # fmt: skip
        if args.connections:
            argv += ["--connections", str(args.connections)]
        if args.report:
            argv += ["--report", args.report]
        started = time.perf_counter()
        try:
            result = wsop(*argv, env=env)
        finally:
            if (Path(tmp) / "stack.json").exists():
                wsop("down", env=env)
            wsop("redis", "stop", env=env)
    if not result.stdout.strip():
        raise SystemExit(f"the chaos load test failed:\n{result.stderr.strip()}")
    out = json.loads(result.stdout)
    out["exit_code"] = result.returncode
    out["verdict"] = result.stderr.strip().splitlines()[-1] if result.returncode else "ok"
    out["wall_s"] = round(time.perf_counter() - started, 1)
    return out


def render(out: dict[str, Any]) -> None:
    lat = out["latency_ms"]
    print(
        f"rate {out['target_rate']:g} msg/s · {out['connections']} connections · "
        f"sent {out['sent']} · p50/p99 {lat['p50']}/{lat['p99']} ms · wall {out['wall_s']} s"
    )
    print("\nfaults:")
    for f in out["faults"]:
        state = "ok" if f["ok"] else "FAILED"
        print(
            f"  {f['label']:<18} {state:<6} started {f['started_s']} s, took {f['duration_s']} s,"
            f" whole again after {f.get('recovered_s')} s  {f['detail']}"
        )
    head = f"{'window':<18}" + "".join(f"{short:>8}" for _, short in COLUMNS)
    print(f"\n{head}{'p99 ms':>9}")
    for w in out["windows"]:
        cells = "".join(f"{w[key]:>8}" for key, _ in COLUMNS)
        print(f"{w['fault'] or 'start':<18}{cells}{w['reconnect_ms']['p99'] or '-':>9}")
    ms = out["reconnect_ms"]
    print(
        f"\nreconnects {out['reconnects']} (p50 {ms['p50']} ms, p99 {ms['p99']} ms), "
        f"not back {out['not_back']} · silent_loss {out['silent_loss']} "
        f"({out['silent_late']} arrived after the grace period) · "
        f"cross_tenant {out['cross_tenant']} · verdict: {out['verdict']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=500, help="msg/s (500)")
    parser.add_argument("--connections", type=int, default=0, help="default: rate / 10")
    parser.add_argument("--duration", type=float, default=52, help="seconds of load (52)")
    parser.add_argument("--workers", type=int, default=0, help="locust workers (0)")
    parser.add_argument(
        "--grace", type=float, default=3.0, help="seconds before a delivery is lost"
    )
    parser.add_argument("--spec", default=SPEC, help="the --chaos list")
    parser.add_argument("--report", default="", help="also write the load test's report here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = run(args)
    if args.json:
        print(json.dumps(out))
    else:
        render(out)


if __name__ == "__main__":
    main()
