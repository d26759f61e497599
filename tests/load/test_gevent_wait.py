"""The pool's wait inside a locust process (`wsop.load.user.GeventHooks.wait`).

Run in a subprocess: importing locust monkey-patches the standard library, which the
rest of the suite must not see.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, os, time, types
    import gevent
    import wsop.load.user as user
    from gevent.monkey import get_original

    def hub_watches(fd):  # is `fd` registered in another epoll of this process (libev's)?
        for other in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink(f"/proc/self/fd/{other}")
                if int(other) == fd or link != "anon_inode:[eventpoll]":
                    continue
                with open(f"/proc/self/fdinfo/{other}") as f:
                    if any(line.split()[:2] == ["tfd:", str(fd)] for line in f):
                        return True
            except OSError:
                continue
        return False

    ep = get_original("select", "epoll")()
    a, b = get_original("socket", "socketpair")()
    ep.register(a.fileno(), 1)
    hooks = user.GeventHooks(types.SimpleNamespace(host="ws://x"), None)
    hooks.watch(ep)
    out = {}

    ticks = []
    def other():  # another greenlet (locust's heartbeat, say): it must get turns
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.001)
    g = gevent.spawn(other)

    t0 = time.monotonic()
    for _ in range(40):
        hooks.wait(1.0)  # nothing readable: each wait ends at the cap, not after 1 s
    out["idle_waits_s"] = time.monotonic() - t0
    out["other_ran"] = len(ticks)
    t0, ran = time.monotonic(), len(ticks)
    while time.monotonic() - t0 < 0.2:
        hooks.sleep(0.001)  # the pauses between ticks: plain sleeps, with hub turns
    out["other_ran_pausing"] = len(ticks) - ran
    b.send(b"x")
    t0 = time.monotonic()
    hooks.wait(1.0)
    out["readable_wait_s"] = time.monotonic() - t0
    out["hub_watched_idle"] = hub_watches(ep.fileno())

    hooks._handshakes = 1  # a handshake in flight: the hub must watch the pool's epoll
    woke = []
    def waiter():
        hooks.wait(1.0)
        woke.append(time.monotonic())
    w = gevent.spawn(waiter)
    gevent.sleep(0.05)
    out["woke_with_handshake"] = bool(woke)
    w.join()
    g.kill()
    print(json.dumps(out))
    """
)


def test_the_pool_waits_in_its_own_epoll_and_the_hub_still_gets_turns() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # blocked in the pool's epoll, capped: 40 waits of at most BLOCK_MAX_S each
    assert out["idle_waits_s"] < 40 * 0.05
    assert out["other_ran"] >= 5  # the hub ran other greenlets in between
    assert 5 <= out["other_ran_pausing"] <= 60  # every ~10 ms, not at every 1 ms pause
    assert out["readable_wait_s"] < 0.05  # readable: no wait at all
    assert out["hub_watched_idle"] is False  # no EPOLL_CTL_ADD of the nested epoll
    assert out["woke_with_handshake"] is True  # with handshakes: the hub's wait, as before
