"""TLS end to end (issue 16): `wsop up --tls` serves wss:// all the way — clients to the
LB, the LB to the sidecars, sidecars to each other — with a certificate from a CA made
for the stack; real TLS clients; a rotated certificate is served after SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.conftest import run_wsop
from wsop import tls
from wsop.local.redis_binary import free_port
from wsop.ring import build


def wsop_json(*args: str, env: dict[str, str]) -> dict:
    done = run_wsop(*args, "--json", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def peer_certificate_serial(port: int, ca: str) -> int:
    import socket

    context = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.timeout(120)
def test_a_tls_stack_end_to_end_and_certificate_reload(redis_url: str, tmp_path: Path) -> None:
    env = {"WSOP_REDIS_URL": redis_url}
    port = free_port()
    up = wsop_json("up", "--detach", "--insecure", "--tls", "--sidecars", "2",
                   "--port", str(port), env=env)  # fmt: skip
    try:
        assert up["tls"] and up["lb"]["url"].startswith("wss://")
        assert all(s["url"].startswith("wss://") for s in up["sidecars"])
        ca = up["ca_file"]
        context = ssl.create_default_context(cafile=ca)
        lb = f"wss://127.0.0.1:{port}/ws"
        ring = build("maglev", sorted(s["name"] for s in up["sidecars"]))
        # two users on different sidecars: the message crosses a TLS peer link too
        a = 1
        b = next(u for u in range(2, 200) if ring.owner(("t0", u)) != ring.owner(("t0", a)))
        with (
            connect(f"{lb}?tenant=t0&user={a}", ssl=context, open_timeout=10) as alice,
            connect(f"{lb}?tenant=t0&user={b}", ssl=context, open_timeout=10) as bob,
        ):
            alice.send(json.dumps({"type": "direct", "to": b, "data": "over tls", "id": "1"}))
            assert json.loads(alice.recv(timeout=10)) == {"type": "ack", "id": "1", "delivered": 1}
            assert json.loads(bob.recv(timeout=10))["data"] == "over tls"
        # a client that does not trust the stack's CA is refused by TLS itself
        with pytest.raises(ssl.SSLError):
            connect(f"{lb}?tenant=t0&user=1", ssl=ssl.create_default_context(), open_timeout=5)
        status = wsop_json("status", env=env)  # the launcher's admin calls go over https
        assert [s["connections"] for s in status["sidecars"]] == [0, 0]

        # rotation: a new certificate (same CA files replaced), SIGHUP, new handshakes see it
        before = peer_certificate_serial(port, ca)
        directory = Path(ca).parent
        tls.issue(directory, ["127.0.0.1", "localhost"], "local stack", days=30)
        os.kill(up["lb"]["pid"], signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                after = peer_certificate_serial(port, ca)  # (the new CA file verifies it)
                if after != before:
                    break
            except ssl.SSLError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the LB kept serving the old certificate after SIGHUP")
        with connect(f"{lb}?tenant=t0&user={a}", ssl=ssl.create_default_context(cafile=ca),
                     open_timeout=10) as again:  # fmt: skip
            again.send(json.dumps({"type": "direct", "to": a, "data": "still", "id": "2"}))
            assert {json.loads(again.recv(timeout=10))["type"] for _ in range(2)} == {
                "ack", "message"
            }  # fmt: skip
    finally:
        run_wsop("down", env=env, timeout=60)


def test_tls_flags_are_checked_before_anything_starts(tmp_path: Path) -> None:
    issued = tls.issue(tmp_path / "certs", ["127.0.0.1"], "test")
    cert, key = issued.directory / "tls.crt", issued.directory / "tls.key"
    for args, error in (
        (["--certfile", str(cert)], "give --certfile and --keyfile together"),
        (["--certfile", str(cert), "--keyfile", str(tmp_path / "nope")], "cannot load"),
        (["--certfile", str(key), "--keyfile", str(key)], "cannot load"),
    ):
        done = run_wsop("lb", "--peers", "s0=ws://127.0.0.1:1", "--insecure", *args)
        assert done.returncode == 2 and error in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
