"""Malformed and duplicate headers on real servers (issue 11): HTTP 400 with the reason,
never a 500, never a traceback in the log. Before the fix, a second `Authorization` or
admin-token header made websockets' `Headers.get` raise MultipleValuesError inside
`process_request`: a 500, logged with a traceback, on the LB and on the sidecar.

Also the token flags, end to end through `wsop lb` (the LB checks a token before it
dials a sidecar, so a 503 "sidecar unavailable" means the token was accepted)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.stack_helpers import ADMIN_TOKEN, ROOT, Sidecars, wait_healthy
from wsop.auth import mint_token
from wsop.jwtkeys import SigningKey
from wsop.local.redis_binary import free_port

ADMIN = "admin-token-for-tests"
SECRET = "h" * 32


def raw_request(port: int, path: str, headers: list[tuple[str, str]]) -> tuple[int, str]:
    """A WebSocket upgrade request with exactly these extra headers (duplicates kept)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.decode("latin-1").partition("\r\n\r\n")
    return int(head.split()[1]), body


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


DUPLICATES = [
    ("/ws?tenant=a&user=1", [bearer("x"), bearer("y")], "Authorization header is given 2"),
    ("/ws?tenant=a&user=1", [("X-Wsop-Lb", "v1"), ("X-Wsop-Lb", "v1")], "X-Wsop-Lb"),
    ("/metrics", [("X-Wsop-Admin-Token", ADMIN), ("X-Wsop-Admin-Token", "x")], "Admin-Token"),
    ("/metrics", [bearer(ADMIN), bearer(ADMIN)], "Authorization header is given 2"),
    ("/ws?tenant=a&user=1", [("Authorization", "Basic abc")], "must be 'Bearer <token>'"),
    ("/ws?tenant=a&user=1&user=2", [], "?user= is given 2 times"),
    ("//[/ws", [], "malformed request target"),  # urlsplit raised ValueError on it
]


def assert_clean_log(log: Path) -> None:
    text = log.read_text(errors="replace")
    for needle in ("Traceback", "MultipleValuesError", "opening handshake failed"):
        assert needle not in text, text[-3000:]


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[tuple[Sidecars, int, Path]]:
    """One real sidecar and a real `wsop lb` in front of it, each logging to a file."""
    sidecars = Sidecars(redis_url, tmp_path / "members.json", {"WSOP_ADMIN_TOKEN": ADMIN})
    s0 = sidecars.start("s0", tmp_path)
    sidecars.write_members()
    port, log = free_port(), tmp_path / "lb.log"
    with open(log, "wb") as out:
        lb = subprocess.Popen(
            [sys.executable, "-m", "wsop.cli.main", "lb", "--port", str(port), "--insecure"]
            + ["--peers", f"s0={s0.url}", "--algo", "rendezvous"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WSOP_ADMIN_TOKEN": ADMIN},
            cwd=ROOT,
        )
    try:
        wait_healthy(port)
        yield sidecars, port, log
    finally:
        lb.terminate()
        lb.wait(15)
        sidecars.stop_all()


def test_duplicate_and_malformed_headers_are_400_with_a_reason(stack) -> None:
    sidecars, lb_port, lb_log = stack
    s0 = sidecars.procs["s0"]
    for port in (lb_port, s0.port):
        for path, headers, reason in DUPLICATES:
            status, body = raw_request(port, path, headers)
            assert (status, body.count("\n")) == (400, 1), (port, path, headers, body)
            assert reason in body, (port, path, body)
        # the same requests, well-formed, still work
        assert raw_request(port, "/ws?tenant=a&user=1", [])[0] == 101
        assert raw_request(port, "/metrics", [bearer(ADMIN)])[0] == 200
    assert raw_request(s0.port, "/peer?from=s9", [bearer(ADMIN), bearer(ADMIN)])[0] == 400
    time.sleep(0.3)  # let the logs flush
    assert_clean_log(lb_log)
    assert_clean_log(lb_log.parent / "s0.log")


def test_token_flags_reach_the_lb(tmp_path: Path) -> None:
    """`wsop lb --jwks FILE --leeway 0 --max-token-lifetime 60`: an ES256 token by kid is
    accepted (then 503: no sidecar), an unknown kid and a long-lived token get 401."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(ECAlgorithm.to_jwk(private.public_key())), "kid": "k1"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    port, log = free_port(), tmp_path / "lb.log"
    with open(log, "wb") as out:
        lb = subprocess.Popen(
            [sys.executable, "-m", "wsop.cli.main", "lb", "--port", str(port)]
            + ["--peers", f"s0=ws://127.0.0.1:{free_port()}", "--algo", "rendezvous"]
            + ["--jwks", str(tmp_path / "jwks.json"), "--leeway", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "WSOP_SECRET": "",
                "WSOP_MAX_TOKEN_LIFETIME": "60",
                "WSOP_ADMIN_TOKEN": ADMIN_TOKEN,
            },
            cwd=ROOT,
        )
    try:
        wait_healthy(port)

        def status(token: str) -> tuple[int, str]:
            return raw_request(port, "/ws", [bearer(token)])

        good = mint_token(SigningKey("ES256", private, "k1"), "acme", "007", ttl_s=60)
        assert status(good)[0] == 503  # authenticated; the sidecar is not there
        unknown = mint_token(SigningKey("ES256", private, "k2"), "acme", 1, ttl_s=60)
        assert status(unknown) == (401, "unknown token key id (kid) 'k2'\n")
        too_long = mint_token(SigningKey("ES256", private, "k1"), "acme", 1, ttl_s=61)
        assert status(too_long)[0] == 401 and "exceeds" in status(too_long)[1]
        hs = mint_token(SECRET, "acme", 1, ttl_s=60)
        assert status(hs) == (401, "HS256 tokens are not accepted (this server: ES256)\n")
    finally:
        lb.terminate()
        lb.wait(15)
    assert_clean_log(log)
