"""`wsop webhook serve`: the admission webhook over HTTPS (the decision is `wsop.k8s.webhook`).

A threading HTTP server from the standard library, wrapped in TLS: the API server sends
one small POST per pod creation, so a thread per request is plenty and keeps the
process free of an event loop. The TLS handshake happens in the request's thread (not
in the accept loop), so a slow or stuck client cannot block everyone else, and every
connection has a read timeout.

- `POST /mutate` — AdmissionReview v1 in, AdmissionReview v1 out (400 for a body that
  is not one; 413 past `MAX_BODY`);
- `GET /healthz` — `ok`, for the Deployment's probes (scheme HTTPS);
- the certificate and key are re-read when their files change (a rotated Secret is
  picked up without a restart: the kubelet updates mounted Secrets in place).
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from wsop.errors import UsageError
from wsop.k8s.manifests import Settings
from wsop.k8s.webhook import BadReview, describe, parse_review, review

MAX_BODY = 4 * 1024 * 1024  # the API server's own request limit is ~3 MiB
READ_TIMEOUT_S = 10.0
RELOAD_EVERY_S = 10.0


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context (TLS ≥ 1.2) with `cert`/`key`; a usage error names a bad file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, cert, key)
    return ctx


def _load(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    for path in (cert, key):
        if not path.is_file():
            raise UsageError(f"{path}: no such file (create it with `wsop webhook certs`)")
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cannot load the TLS certificate {cert} with key {key}: {exc}") from None


class WebhookServer(ThreadingHTTPServer):
    """The HTTPS server; `serve_forever()` until `shutdown()`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        settings: Settings,
        cert: Path,
        key: Path,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.cert, self.key = cert, key
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.ssl_context = tls_context(cert, key)
        self._stamp = self._files_stamp()
        self._stop = threading.Event()
        try:
            super().__init__(address, _Handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {address[0]}:{address[1]}: {exc}") from None
        threading.Thread(target=self._watch_files, daemon=True, name="cert-reload").start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        # the handshake runs on first read, in the request's own thread
        tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        self.log(f"webhook: connection from {client_address[0]} failed: {exc}")

    def server_close(self) -> None:
        self._stop.set()
        super().server_close()

    def _files_stamp(self) -> tuple[Any, ...]:
        stamps = []
        for path in (self.cert, self.key):
            with contextlib.suppress(OSError):
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _watch_files(self) -> None:
        while not self._stop.wait(RELOAD_EVERY_S):
            stamp = self._files_stamp()
            if stamp == self._stamp:
                continue
            try:
                _load(self.ssl_context, self.cert, self.key)
            except UsageError as exc:  # half-written during rotation: try again later
                self.log(f"webhook: keeping the previous certificate: {exc}")
                continue
            self._stamp = stamp
            self.log(f"webhook: reloaded the certificate {self.cert}")


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"  # keep-alive: the API server reuses connections
    timeout = READ_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # one line per review instead
        pass

    def do_GET(self) -> None:
        if self.path.split("?")[0] in ("/healthz", "/readyz"):
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        if self.path.split("?")[0] != "/mutate":
            self._send(404, b"not found\n", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length") or "-1")
        except ValueError:
            length = -1
        if length < 0:
            self._send(411, b"Content-Length required\n", "text/plain")
            return
        if length > MAX_BODY:
            self.close_connection = True
            self._send(413, b"request too large\n", "text/plain")
            return
        body = self.rfile.read(length)
        try:
            request = parse_review(body)
        except BadReview as exc:
            self.server.log(f"webhook: bad request from {self.client_address[0]}: {exc}")
            self._send(400, f"{exc}\n".encode(), "text/plain")
            return
        answer = review(request, self.server.settings)
        self.server.log(f"webhook: {describe(request, answer)}")
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
