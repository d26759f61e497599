"""Highest msg/s the load generator sustains against the local stack with 0 loss.

For each worker count (default 1 and 2), step the rate up (×factor) with
`wsop loadtest --local --workers N --rate R --duration D` until a step loses a
delivery or falls > 10% short of its planned messages; the last clean step is the
result. One private stack (2 sidecars, insecure, its own state dir and Redis) serves
every step.

Also measured per step, to say what limits the number: CPU seconds of the load
generator (the `wsop loadtest` process tree: locust master and workers) and of the
stack (LB, sidecars, Redis), both over the step's wall time.

    .venv/bin/python bench/loadtest.py                  # ~5 min on 2 cores
    .venv/bin/python bench/loadtest.py --workers 1 --start 2000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wsop.local.redis_binary import free_port

ROOT = Path(__file__).resolve().parent.parent


def wsop(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsop.cli.main", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
    )  # fmt: skip


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stack_pids(state: Path) -> list[int]:
    doc = json.loads((state / "stack.json").read_text())
    pids = [doc["lb"]["pid"], *(s["pid"] for s in doc["sidecars"])]
    port = doc["redis_url"].rsplit(":", 1)[1].split("/")[0]
    found = subprocess.run(["pgrep", "-f", f"redis-server.*{port}"], capture_output=True, text=True)
    return pids + [int(p) for p in found.stdout.split()]


def step(rate: float, workers: int, seconds: float, env: dict[str, str], state: Path) -> dict:
    pids = stack_pids(state)
    stack_before = sum(cpu_seconds(p) for p in pids)
    gen_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = wsop(
        "loadtest", "--local", "--workers", str(workers), "--rate", str(rate),
        "--duration", str(seconds), "--json", "--allow-loss", "--min-rate-ratio", "0.01",
        env=env,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"loadtest failed at {rate} msg/s:\n{result.stderr}")
    gen_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = json.loads(result.stdout)
    gen = (gen_after.ru_utime + gen_after.ru_stime) - (gen_before.ru_utime + gen_before.ru_stime)
    out["cpu_generator_s"] = round(gen, 1)
    out["cpu_stack_s"] = round(sum(cpu_seconds(p) for p in pids) - stack_before, 1)
    out["wall_s"] = round(wall, 1)
    out["clean"] = out["lost"] == 0 and out["rate_ratio"] >= 0.9
    return out


def search(workers: int, args: argparse.Namespace, env: dict, state: Path) -> dict[str, Any]:
    rate, steps, best = float(args.start), [], None
    while rate <= args.max_rate:
        out = step(rate, workers, args.seconds, env, state)
        steps.append(out)
        lat = out["latency_ms"]
        print(
            f"workers={workers} rate={rate:>7.0f} sent/s={out['msgs_per_s']:>8.1f} "
            f"ratio={out['rate_ratio']:.3f} lost={out['lost']:>6} late={out['late']:>5} "
            f"p50/p95/p99={lat['p50']}/{lat['p95']}/{lat['p99']} ms "
            f"cpu gen={out['cpu_generator_s']}s stack={out['cpu_stack_s']}s "
            f"wall={out['wall_s']}s {'ok' if out['clean'] else 'FAIL'}",
            file=sys.stderr,
        )
        if not out["clean"]:
            break
        best = out
        rate = round(rate * args.factor, -2)
    return {"workers": workers, "best": best, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to try (1,2)")
    parser.add_argument("--start", type=float, default=2000)
    parser.add_argument("--factor", type=float, default=1.25)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--max-rate", type=float, default=60000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wsop-bench-lt-") as tmp:
        state = Path(tmp)
        env = {**os.environ, "WSOP_STATE_DIR": tmp}
        env.pop("WSOP_REDIS_URL", None)
        up = wsop("up", "--detach", "--insecure", "--port", str(free_port()), env=env)
        if up.returncode != 0:
            raise SystemExit(up.stderr)
        try:
            runs = [search(int(w), args, env, state) for w in args.workers.split(",")]
        finally:
            wsop("down", env=env)
            wsop("redis", "stop", env=env)
    report = {"cpus": os.cpu_count(), "step_seconds": args.seconds, "runs": runs}
    if args.json:
        print(json.dumps(report))
        return
    print(f"\n{'workers':>7} {'best msg/s':>10} {'deliveries/s':>12} {'p95 ms':>7}")
    for run in runs:
        best = run["best"] or {}
        print(
            f"{run['workers']:>7} {best.get('msgs_per_s', 0):>10} "
            f"{best.get('deliveries_per_s', 0):>12} {(best.get('latency_ms') or {}).get('p95')}"
        )


if __name__ == "__main__":
    main()
