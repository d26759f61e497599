"""`make demo`: the main job on the embedded default Redis, through the real `wsop` CLI.

Each step prints the command it runs, so the demo doubles as a tour of the CLI.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

WSOP = [sys.executable, "-m", "wsop.cli.main"]


def run(*args: str, show: bool = True) -> str:
    print(f"\n$ wsop {shlex.join(args)}", flush=True)
    done = subprocess.run([*WSOP, *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(done.returncode)
    if show:
        print(done.stdout.rstrip())
    return done.stdout


def main() -> None:
    run("redis", "start")
    run(
        "seed",
        "synthetic",
        "--tenants",
        "5",
        "--users",
        "1000000",
        "--teams",
        "50",
        "--team-size",
        "10000",
        "--online",
        "0.2",
        "--seed",
        "42",
        "--replace",
    )
    for teams in (["team-1"], ["team-1", "team-2", "team-3"], ["team-7", "no-such-team"]):
        flags = [x for t in teams for x in ("--team", t)]
        run("resolve", "--tenant", "t0", *flags, "--count")
    out = json.loads(run("resolve", "--tenant", "t3", "--team", "team-5", "--json", show=False))
    print(
        f"t3/team-5: {out['count']} online recipients in {out['elapsed_ms']} ms; "
        f"first five: {out['recipients'][:5]}"
    )
    run("online", "add", "--tenant", "t3", "0", "1", "2")
    run("resolve", "--tenant", "t3", "--team", "team-5", "--team", "team-6", "--count")
    run("redis", "status")
    print("\nThe embedded Redis keeps running for later commands; stop it with `wsop redis stop`.")


if __name__ == "__main__":
    main()
