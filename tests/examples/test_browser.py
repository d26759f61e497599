"""examples/browser.html in headless Chromium against a real local stack (JWT, real
sidecar): what docs/quickstart.md promises a person in five minutes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from websockets.sync.client import connect

from tests.conftest import ROOT, run_wsop
from tests.examples.chromium import find_chromium, open_page
from wsop.local.redis_binary import free_port

PAGE = ROOT / "examples" / "browser.html"
FRAMES = "[...document.querySelectorAll('#log li')].map(li => li.dataset.frame && JSON.parse(li.dataset.frame)).filter(Boolean)"  # noqa: E501


@pytest.fixture
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (`make test` installs Debian's chromium)")
    return binary


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[dict]:
    members = tmp_path / "members.csv"
    members.write_text("tenant,team,user\nacme,eng,1\nacme,eng,2\nacme,ops,3\n")
    env = {"WSOP_REDIS_URL": redis_url, "WSOP_SECRET": ""}
    assert run_wsop("seed", "load", str(members), env=env).returncode == 0
    up = run_wsop("up", "--detach", "--sidecars", "1", "--port", str(free_port()), env=env)
    assert up.returncode == 0, up.stderr
    yield json.loads((Path(os.environ["WSOP_STATE_DIR"]) / "stack.json").read_text())
    run_wsop("down")


def token(user: int) -> str:
    """What the quickstart tells the user to run (the stack's secret is found)."""
    done = run_wsop("token", "--tenant", "acme", "--user", str(user), env={"WSOP_SECRET": ""})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def next_message(ws) -> dict:
    """The next `message` frame a client gets (its own acks skipped)."""
    while True:
        frame = json.loads(ws.recv(timeout=5))
        if frame["type"] == "message":
            return frame


def frames_where(page, condition: str) -> list:
    """Wait until the page has logged frames matching the JS `condition` on `f`."""
    matching = f"{FRAMES}.filter(f => {condition})"
    return page.wait(f"(() => {{ const m = {matching}; return m.length ? m : null; }})()")


def test_browser_page_talks_to_the_local_stack(chromium: str, stack: dict, tmp_path: Path) -> None:
    lb = f"{stack['lb']['url']}/ws"
    query = urlencode({"lb": lb, "token": token(1)})
    with (
        open_page(chromium, f"{PAGE.as_uri()}?{query}", tmp_path / "profile") as page,
        connect(f"{lb}?token={token(2)}", open_timeout=5) as other,
    ):
        page.wait("document.getElementById('status').dataset.state === 'open'")
        # the page offered the wsop.v1 subprotocol and got it (browsers that must name
        # one used to fail with 1006: no subprotocol was ever selected)
        assert page.js("ws.protocol") == "wsop.v1"

        # the page sends a direct message: user 2 gets it, the page gets its ack
        page.js("document.getElementById('to').value = '2'")
        page.js("document.getElementById('direct-text').value = 'hello from the browser'")
        page.js("document.getElementById('send-direct').click()")
        got = next_message(other)
        assert (got["type"], got["from"], got["data"]) == (
            "message", 1, {"text": "hello from the browser"},
        )  # fmt: skip
        assert frames_where(page, "f.type === 'ack' && f.id === 'b1'")[0]["delivered"] == 1

        # user 2 answers: the page shows it
        other.send(json.dumps({"type": "direct", "to": 1, "data": {"text": "hi browser"}}))
        shown = frames_where(page, "f.type === 'message' && f.from === 2")
        assert shown[0]["data"] == {"text": "hi browser"}
        assert "← from 2: " in page.js("document.getElementById('log').textContent")

        # a team message: both members online get it, the sender included
        page.js("document.getElementById('teams').value = 'eng'")
        page.js("document.getElementById('team-text').value = 'standup'")
        page.js("document.getElementById('send-team').click()")
        ack = frames_where(page, "f.type === 'ack' && f.id === 'b2'")[0]
        assert ack["delivered"] == 2 and not ack.get("undelivered")
        own = frames_where(page, "f.type === 'message' && f.teams")[0]
        assert (own["from"], own["teams"], own["data"]) == (1, ["eng"], {"text": "standup"})
        got = next_message(other)
        assert (got["from"], got["teams"]) == (1, ["eng"])

        # a team the sender is not in: the stack's error frame is shown
        page.js("document.getElementById('teams').value = 'ops'")
        page.js("document.getElementById('send-team').click()")
        refused = frames_where(page, "f.type === 'error' && f.id === 'b3'")[0]
        assert refused["code"] == "forbidden"
        if os.environ.get("WSOP_BROWSER_SCREENSHOT"):  # to look at the page by hand
            page.screenshot(Path(os.environ["WSOP_BROWSER_SCREENSHOT"]))


def test_a_bad_token_says_so(chromium: str, stack: dict, tmp_path: Path) -> None:
    lb = f"{stack['lb']['url']}/ws"
    query = urlencode({"lb": lb, "token": "not-a-token"})
    with open_page(chromium, f"{PAGE.as_uri()}?{query}", tmp_path / "profile") as page:
        text = page.wait(
            "document.getElementById('status').dataset.state === 'error' && "
            "document.getElementById('status').textContent"
        )
        assert "401" in text
