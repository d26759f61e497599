"""Fuzz a real stack (2 sidecars behind the LB) while honest clients keep talking.

Mutated frames (bit flips, truncations, random bytes, random stream splits, JSON of every
wrong shape, invalid UTF-8, bad close frames…) over two tenants, through the LB and
straight to the sidecars, from many connections that reconnect whenever a server closes
one. Verdict: no server crashed, no traceback in any server log, no cross-tenant
delivery, every honest message acked with the right `delivered` and received once by
each recipient. Exit status 1 when any of that fails.

    .venv/bin/python bench/fuzz.py [--frames 2000000] [--seed 6455] [--json]

tests/fuzz/test_fuzz.py runs the same campaign at 10^5 frames.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import machine_note, private_redis, raise_fd_limit  # noqa: E402
from wsop.fuzz.campaign import run_on_new_stack  # noqa: E402
from wsop.fuzz.report import Config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="frames to send")
    parser.add_argument("--seed", type=int, default=Config.seed, help="reproduces a run")
    parser.add_argument(
        "--workers", type=int, default=Config.workers, help="concurrent fuzz connections"
    )
    parser.add_argument("--max-seconds", type=float, default=0, help="0: no time cap")
    parser.add_argument("--keep-logs", metavar="DIR", help="write the server logs here")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupted)
    raise_fd_limit()
    config = Config(
        seed=args.seed,
        frames=args.frames,
        workers=args.workers,
        max_seconds=args.max_seconds or 1e9,
    )
    if not args.json:
        print(f"seed {config.seed}, {config.frames} frames, {machine_note()}", flush=True)
    with private_redis() as (_, info), tempfile.TemporaryDirectory(prefix="wsop-fuzz-") as tmp:
        workdir = Path(args.keep_logs) if args.keep_logs else Path(tmp)
        report = run_on_new_stack(
            config, f"redis://127.0.0.1:{info.port}/0", workdir, progress=live
        )
    doc = report.as_dict()
    doc["machine"] = machine_note()
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        render(doc)
    return 0 if doc["verdict"] == "pass" else 1


def live(snapshot: dict) -> None:
    """Progress on stderr every 10 s (stdout stays one JSON document with --json)."""
    print(
        f"{snapshot['s']:>5} s {snapshot['frames']:>10,} frames "
        f"{snapshot['connections']:>7,} connections | honest sent/acked/last ack: "
        + " ".join(snapshot["honest"]),
        file=sys.stderr,
        flush=True,
    )


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM too: the stack and Redis are stopped on the way out


def render(doc: dict) -> None:
    print(
        f"{doc['frames']:,} frames ({doc['bytes'] / 1e6:.1f} MB) in {doc['seconds']} s: "
        f"{doc['frames_per_s']:,} frames/s over {doc['connections']:,} connections "
        f"{doc['by_target']}"
    )
    print("closes by code:", doc["closes"])
    print("endings:       ", doc["endings"])
    print("errors by code:", doc["errors"])
    print("killers sent:  ", doc["killers"])
    print(f"acks to fuzzers {doc['acks']:,}, messages delivered to fuzzers "
          f"{doc['deliveries_to_fuzzers']:,}, refused {doc['refused']}")  # fmt: skip
    print("honest clients:", doc["honest"])
    print("CPU seconds:   ", doc["cpu_seconds"])
    print("cross-tenant deliveries:", doc["cross_tenant"])
    print("crashed:", doc["crashed"] or "none", "| tracebacks:", doc["tracebacks"] or "none")
    for problem in doc["problems"]:
        print("PROBLEM:", problem)
    print(f"verdict: {doc['verdict']} (seed {doc['seed']})")


if __name__ == "__main__":
    sys.exit(main())
