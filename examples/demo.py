"""`make demo`: the main job on the embedded default Redis, through the real `wsop` CLI.

1. tenant bitmaps: seed synthetic tenants, resolve team messages' recipients;
2. the stack: `wsop up` (LB + 3 sidecars, JWT auth), a token from `wsop token`, clients
   of two tenants exchanging direct and team messages (same numeric user ids in both
   tenants: nothing crosses over);
3. a short `smoke` load test against that stack, then `wsop down`.

Every command it shows is followed by what that command printed (stdout, then
stderr), so the demo doubles as a tour of the CLI. It writes no file of its own and
leaves nothing running but the embedded Redis, and says how to stop that. `--quick` is
the same tour on small data with a 3 s load test (tests/test_demo.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

WSOP = [sys.executable, "-m", "wsop.cli.main"]
ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, show: bool = True, check: bool = True) -> str:
    """Run `wsop ARGS`; if `show`, print the command and then everything it printed.
    A hidden run (the demo's own plumbing) prints nothing at all."""
    if show:
        print(f"\n$ wsop {shlex.join(args)}", flush=True)
    done = subprocess.run([*WSOP, *args], capture_output=True, text=True)
    if show:
        for stream in (done.stdout, done.stderr):
            if stream.strip():
                print(stream.rstrip(), flush=True)
    if check and done.returncode != 0:
        if not show:
            sys.stderr.write(f"$ wsop {shlex.join(args)}\n{done.stdout}{done.stderr}")
        raise SystemExit(done.returncode)
    return done.stdout


def section(title: str) -> None:
    print(f"\n── {title} " + "─" * max(0, 70 - len(title)), flush=True)


def bitmaps(quick: bool) -> None:
    section("1. tenant bitmaps in the embedded Redis")
    run("redis", "start")
    size = ("2", "20000", "20", "500") if quick else ("5", "1000000", "50", "10000")
    tenants, users, teams, team_size = size
    run(
        "seed", "synthetic", "--tenants", tenants, "--users", users, "--teams", teams,
        "--team-size", team_size, "--online", "0.2", "--seed", "42", "--replace",
    )  # fmt: skip
    for names in (["team-1"], ["team-1", "team-2", "team-3"], ["team-7", "no-such-team"]):
        flags = [x for t in names for x in ("--team", t)]
        run("resolve", "--tenant", "t0", *flags, "--count")
    run("resolve", "--tenant", "t1", "--team", "team-5")


def chat(lb: str) -> None:
    """Two tenants with the same user ids and team names; print what each client gets."""
    from websockets.sync.client import connect

    section("2. clients of two tenants through the LB")
    run("seed", "load", "examples/members.csv", "--replace")  # eng: 1,2,3; ops: 3,4
    token = run("token", "--tenant", "acme", "--user", "1").strip()
    tokens = {("acme", 1): token}
    for tenant in ("acme", "globex"):
        for user in (1, 2, 3, 4):
            if (tenant, user) not in tokens:
                minted = run("token", "--tenant", tenant, "--user", str(user), show=False)
                tokens[(tenant, user)] = minted.strip()
    clients = {
        key: connect(f"{lb}/ws?token={tok}", open_timeout=5, legacy=True)
        for key, tok in tokens.items()
    }
    time.sleep(0.3)
    print("\nEach client connects to the LB with its own token (the rest minted alike).")
    print("acme/1 → direct to user 2;  acme/3 → team eng;  globex/4 → team eng (not a member)")
    clients[("acme", 1)].send('{"type":"direct","to":2,"data":"hi 2","id":"d1"}')
    clients[("acme", 3)].send('{"type":"team","teams":["eng"],"data":"standup!","id":"t1"}')
    clients[("globex", 4)].send('{"type":"team","teams":["eng"],"data":"let me in","id":"t2"}')
    time.sleep(0.5)
    for (tenant, user), ws in clients.items():
        frames = []
        while True:
            try:
                frames.append(json.loads(ws.recv(timeout=0.05)))
            except TimeoutError:
                break
        shown = [f"{f['type']}:{f.get('data', f.get('delivered', f.get('code')))}" for f in frames]
        print(f"  {tenant}/{user}: {', '.join(shown) or '—'}")
        ws.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def still_running() -> None:
    """The one thing the demo leaves running, and how to stop it."""
    state = json.loads(run("redis", "status", "--json", show=False, check=False) or "{}")
    if state.get("running"):
        print(
            f"\nStill running: the embedded Redis at {state['url']} (data in "
            f"{state['data_dir']}), shared by later wsop commands. Stop it with:\n"
            "  wsop redis stop"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, 3 s load test")
    quick = parser.parse_args().quick
    os.chdir(ROOT)  # the paths it shows are the repository's (examples/members.csv)
    started = False
    try:
        bitmaps(quick)
        section("the local stack")
        run("up", "--detach", "--sidecars", "3", "--port", str(free_port() if quick else 8765))
        started = True
        status = json.loads(run("status", "--json", show=False))
        chat(status["lb"]["url"])
        run("status")
        section("3. a smoke load test against the stack")
        duration = "3" if quick else "10"
        run("loadtest", "--local", "--profile", "smoke", "--duration", duration, check=False)
    finally:
        if started:
            section("stopping the stack")
            run("down", check=False)
        still_running()
    print("\nNext: a browser client in five minutes, see docs/quickstart.md.")


if __name__ == "__main__":
    main()
