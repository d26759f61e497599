"""`make demo`: the main job on the embedded default Redis, through the real `wsop` CLI.

1. tenant bitmaps: seed synthetic tenants, resolve team messages' recipients;
2. the stack: `wsop up` (LB + 3 sidecars), clients of two tenants exchanging direct and
   team messages (same numeric user ids in both tenants: nothing crosses over);
3. a short `smoke` load test against that stack, then `wsop down`.

Each step prints the command it runs, so the demo doubles as a tour of the CLI.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time

WSOP = [sys.executable, "-m", "wsop.cli.main"]


def run(*args: str, show: bool = True, check: bool = True) -> str:
    print(f"\n$ wsop {shlex.join(args)}", flush=True)
    done = subprocess.run([*WSOP, *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(done.returncode)
    if show:
        print(done.stdout.rstrip())
    return done.stdout


def bitmaps() -> None:
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


def chat(lb: str) -> None:
    """Two tenants with the same user ids and team names; print what each client gets."""
    from websockets.sync.client import connect

    members = "tenant,team,user\n" + "".join(
        f"{t},{team},{u}\n"
        for t in ("acme", "globex")
        for team, users in (("eng", (1, 2, 3)), ("ops", (3, 4)))
        for u in users
    )
    path = "/tmp/wsop-demo-members.csv"
    with open(path, "w") as handle:
        handle.write(members)
    run("seed", "load", path, "--replace")
    clients = {
        (t, u): connect(f"{lb}/ws?tenant={t}&user={u}", open_timeout=5, legacy=True)
        for t in ("acme", "globex")
        for u in (1, 2, 3, 4)
    }
    time.sleep(0.3)
    print("\nacme/1 → direct to user 2;  acme/3 → team eng;  globex/4 → team eng (not a member)")
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


def main() -> None:
    bitmaps()
    run("up", "--detach", "--insecure", "--sidecars", "3")
    try:
        status = json.loads(run("status", "--json", show=False))
        lb = status["lb"]["url"].removesuffix("/ws")
        chat(lb)
        run("status")
        run("loadtest", "--local", "--profile", "smoke", "--duration", "10", check=False)
    finally:
        run("down")
    print("\nThe embedded Redis keeps running for later commands; stop it with `wsop redis stop`.")


if __name__ == "__main__":
    main()
