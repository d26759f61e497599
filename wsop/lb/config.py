"""What `wsop lb` was told, checked once: the CLI builds it, tests build it directly.

Everything the LB refuses to start with is refused here (`__post_init__`), before a
socket is bound, as the one-line errors the CLI prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wsop import protocol
from wsop.auth import DEFAULT_LEEWAY_S, DEFAULT_MAX_LIFETIME_S, TokenVerifier
from wsop.checks import (
    check_host,
    check_member_name,
    check_port,
    check_positive_int,
    check_seconds,
)
from wsop.discovery import MembershipSource
from wsop.ring import check_routing_algorithm
from wsop.tls import TlsSettings
from wsop.trunk import DEFAULT_PER_SIDECAR, check_trunks


@dataclass
class LBConfig:
    """Everything `wsop lb` was told; built by the CLI, or directly by tests."""

    host: str
    port: int
    source: MembershipSource
    algo: str
    insecure: bool = False
    secret: str | None = None
    admin_token: str | None = None
    name: str = "lb"
    drain_s: float = 1.0
    """SIGTERM closes clients (1012) spread over this window, not all in one instant."""
    open_timeout: float = 5.0
    allowed_origins: tuple[str, ...] | None = None
    """Browser origins admitted (`Origin` header); None admits any (see docs/security.md)."""
    tls: TlsSettings = field(default_factory=TlsSettings)
    """wss:// for clients (`certfile`/`keyfile`), and the CA of wss:// sidecars."""
    trunks: int = DEFAULT_PER_SIDECAR
    """Trunks per sidecar carrying the clients' sidecar legs (`wsop.lb.trunks`); 0: one
    TCP connection per client."""
    move_drain_s: float = 15.0
    """After a switch, the old sidecar closes the old upstream once it owes the client
    nothing (acks of messages still in flight: up to their 10 s timeout); this is the
    backstop after which the LB closes it itself."""
    # client tokens (wsop/auth.py): RS256/ES256 keys besides the HS256 secret, and policy
    jwt_public_key: str | None = None
    jwks: str | None = None
    leeway_s: int = DEFAULT_LEEWAY_S
    max_token_lifetime_s: int = DEFAULT_MAX_LIFETIME_S
    max_frame_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES
    """Largest `POST /publish` body forwarded (give the sidecars' `--max-frame-bytes`)."""

    def __post_init__(self) -> None:
        """Refuse what `wsop lb` refuses (port 0: let the OS pick a free one)."""
        check_routing_algorithm(self.algo)
        check_host(self.host)
        check_port(self.port)
        check_member_name(self.name, "lb name")
        check_seconds(self.drain_s, "drain time (drain_s, --drain-seconds)")
        check_seconds(self.open_timeout, "open_timeout", allow_zero=False)
        check_seconds(self.move_drain_s, "move_drain_s")
        check_positive_int(self.max_frame_bytes, "max_frame_bytes")
        check_trunks(self.trunks)
        self.token_verifier()  # key files readable, leeway and lifetime sane

    def token_verifier(self) -> TokenVerifier | None:
        """What client tokens are checked with (None: no key at all, an insecure stack)."""
        return TokenVerifier.from_settings(
            self.secret, self.jwt_public_key, self.jwks, self.leeway_s, self.max_token_lifetime_s
        )
