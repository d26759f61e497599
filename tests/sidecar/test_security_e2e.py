"""Closed doors (issue 11, observations 1 and 3), tried as an attacker would: real sidecar
processes and a real `wsop lb`.

- a sidecar without `WSOP_ADMIN_TOKEN` used to serve `/peer`, `/connections` and
  `/metrics` to anyone: a raw WebSocket to `/peer` injected a message into another
  tenant. Now it refuses to start, and `/peer` without the token is a 401;
- LB-only signals (`?moved_from=`, the via-LB mark) used to be taken from any client;
  now only the LB's signed header counts, and a client's own control frames never pass
  the LB.
"""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import run_wsop
from tests.stack_helpers import (
    Sidecars,
    admin_get,
    client,
    drain,
    recv_json,
    seed_tenant,
    sidecars_behind_lb,
)
from wsop.ring import build


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[tuple[Sidecars, int]]:
    with sidecars_behind_lb(redis_url, tmp_path) as running:
        yield running


def test_a_sidecar_will_not_start_without_the_admin_token(redis_url: str) -> None:
    for extra in ([], ["--insecure"]):  # --insecure relaxes client tokens, not this
        done = run_wsop(
            "sidecar", "--name", "s0", "--peers", "s0=ws://127.0.0.1:1", "--redis", redis_url,
            *extra, env={"WSOP_ADMIN_TOKEN": "", "WSOP_SECRET": "x" * 32},
        )  # fmt: skip
        assert done.returncode == 2 and "needs WSOP_ADMIN_TOKEN" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_peer_and_admin_endpoints_need_the_token(
    stack: tuple[Sidecars, int], r: redis.Redis
) -> None:
    sidecars, _ = stack
    seed_tenant(r, "victim", {"eng": {7}})
    url = sidecars.procs["s0"].url
    victim = client(url, "victim", 7)
    with pytest.raises(InvalidStatus) as refused:  # the old injection: a raw /peer link
        connect(f"{url}/peer?from=x", open_timeout=5)
    assert refused.value.response.status_code == 401
    forged = {"Authorization": "Bearer not-the-token"}
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{url}/peer?from=x", additional_headers=forged, open_timeout=5)
    assert refused.value.response.status_code == 401
    for path in ("/metrics", "/connections", "/drain", "/move"):
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib_get(url.replace("ws://", "http://") + path)
        assert denied.value.code == 401, path
    assert drain(victim, 0.3) == []
    assert b"wsop_connections" in admin_get(url + "/metrics")  # with the token: fine
    victim.close()


def urllib_get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


def test_direct_clients_cannot_claim_lb_only_signals(
    stack: tuple[Sidecars, int], r: redis.Redis
) -> None:
    """A direct client's `?moved_from=` used to silence the user's own other connection
    (the owner swapped it out), and `X-Wsop-Via: lb` made it receive internal move frames
    (which name sidecar URLs) and be counted as movable."""
    sidecars, _ = stack
    seed_tenant(r, "A", {"eng": {1, 2, 3}})
    ring = build("rendezvous", sorted(sidecars.procs))
    owner = ring.owner(("A", 2))
    other = next(n for n in sidecars.procs if n != owner)
    tab1 = client(sidecars.procs[owner].url, "A", 2)
    # the second tab, on the other sidecar, claims to be moving from the owner and to
    # come through an LB, with an old-style header and a forged signed one
    forged = {"X-Wsop-Via": "lb", "X-Wsop-Lb": f"v1 {int(time.time())} {owner} 00ff"}
    tab2 = connect(
        f"{sidecars.procs[other].url}/ws?tenant=A&user=2&moved_from={owner}",
        additional_headers=forged,
        open_timeout=5,
    )
    time.sleep(0.3)
    sender = client(sidecars.procs[owner].url, "A", 1)
    sender.send('{"type":"direct","to":2,"data":"both tabs","id":"x"}')
    assert recv_json(sender)["delivered"] == 1
    assert recv_json(tab1)["data"] == "both tabs"  # the first tab was not silenced
    assert recv_json(tab2)["data"] == "both tabs"
    drained = json.loads(admin_get(sidecars.procs[other].url + "/drain"))
    assert drained["moving"] == 0 and drained["unmovable"] == 1  # not taken for the LB's
    assert drain(tab2, 0.5) == []  # and no move frame reached it
    for ws in (tab1, tab2, sender):
        ws.close()


def test_a_client_behind_the_lb_cannot_speak_for_the_lb(
    stack: tuple[Sidecars, int], r: redis.Redis
) -> None:
    """NUL-prefixed text frames are the LB's word to a sidecar ("the client moved away"):
    the LB takes a client's own out of the stream."""
    seed_tenant(r, "A", {"eng": {1, 2}})
    _, port = stack
    lb = f"ws://127.0.0.1:{port}"
    a, b = client(lb, "A", 1), client(lb, "A", 2)
    a.send("\x00wsop:moved")  # would make its sidecar close it after 0.5 s
    time.sleep(1.0)
    a.send('{"type":"direct","to":2,"data":"still here","id":"s"}')
    assert recv_json(a) == {"type": "ack", "id": "s", "delivered": 1}
    assert recv_json(b)["data"] == "still here"
    metrics = admin_get(f"http://127.0.0.1:{port}/metrics").decode()
    assert 'wsop_lb_refused_total{what="client_control_frame"} 1.0' in metrics
    a.close()
    b.close()


@pytest.mark.parametrize("target", ["lb", "sidecar"])
def test_the_wsop_v1_subprotocol_is_selected_when_offered(
    stack: tuple[Sidecars, int], r: redis.Redis, target: str
) -> None:
    """Browsers that offer a subprotocol used to fail (1006): none was ever selected."""
    seed_tenant(r, "A", {"eng": {1}})
    sidecars, port = stack
    base = f"ws://127.0.0.1:{port}" if target == "lb" else sidecars.procs["s0"].url
    url = f"{base}/ws?tenant=A&user=1"
    for offered in (["wsop.v1"], ["chat", "wsop.v1"]):
        with connect(url, subprotocols=offered, open_timeout=5) as ws:
            assert ws.subprotocol == "wsop.v1"
            ws.send('{"type":"direct","to":1,"data":"hi","id":"h"}')
            assert {json.loads(ws.recv(timeout=5))["type"] for _ in range(2)} == {"ack", "message"}
    with connect(url, open_timeout=5) as ws:  # none offered: none selected, all fine
        assert ws.subprotocol is None
    with pytest.raises(InvalidStatus) as refused:  # only others: a 400 that says why
        connect(url, subprotocols=["chat"], open_timeout=5)
    assert refused.value.response.status_code == 400
    assert b"this server speaks wsop.v1" in refused.value.response.body


def test_allowed_origins_admit_those_origins_and_non_browsers(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    seed_tenant(r, "A", {"eng": {1}})
    sidecars = Sidecars(redis_url, tmp_path / "members.json", {})
    sidecars.write_members()
    sidecars.start("s0", tmp_path, ["--allowed-origins", "https://app.example.com"])
    sidecars.write_members()
    try:
        url = f"{sidecars.procs['s0'].url}/ws?tenant=A&user=1"
        connect(url, origin="https://app.example.com", open_timeout=5).close()
        connect(url, open_timeout=5).close()  # no Origin header: not a browser
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin="https://evil.example.net", open_timeout=5)
        assert refused.value.response.status_code == 403
    finally:
        sidecars.stop_all()
    done = run_wsop("sidecar", "--name", "s0", "--peers", "s0=ws://h:1", "--allowed-origins",
                    "app.example.com", "--insecure")  # fmt: skip
    assert done.returncode == 2 and "is not an origin" in done.stderr
