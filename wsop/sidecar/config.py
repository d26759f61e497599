"""A sidecar's settings: everything `wsop sidecar` was told, checked in the constructor,
so that the library refuses what the CLI refuses (`SidecarConfig(port=70000)` raises the
same one-line `UsageError` as `wsop sidecar --port 70000`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from wsop import protocol
from wsop.auth import DEFAULT_LEEWAY_S, DEFAULT_MAX_LIFETIME_S, TokenVerifier
from wsop.checks import (
    check_history_backend,
    check_host,
    check_member_name,
    check_port,
    check_positive_int,
    check_seconds,
)
from wsop.errors import UsageError
from wsop.quotas import Quotas
from wsop.ring import DEFAULT_ALGORITHM, check_routing_algorithm
from wsop.sidecar.history import HistoryLimits
from wsop.sidecar.presence import PresenceTimings
from wsop.tls import TlsSettings


@dataclass
class SidecarConfig:
    name: str
    host: str = "127.0.0.1"
    port: int = 0
    algo: str = DEFAULT_ALGORITHM  # what the LB uses unless told otherwise
    insecure: bool = False
    secret: str | None = None
    admin_token: str | None = None
    max_frame_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES
    close_window_s: float = 2.0
    slow_client_s: float = 10.0
    """How long a client may keep over 1 MiB of its messages unread before it is closed."""
    upstream: str | None = None
    allowed_origins: tuple[str, ...] | None = None
    """Browser origins admitted (`Origin` header); None admits any (see docs/security.md)."""
    quotas: Quotas = field(default_factory=Quotas)
    """Connections per user and tenant, messages/s, recipients: `wsop.quotas`."""
    # presence healing (wsop/sidecar/presence.py): heartbeat, lease, team-message wait
    heartbeat_s: float = 2.0
    lease_s: float = 10.0
    presence_wait_s: float = 5.0
    # client tokens (wsop/auth.py): RS256/ES256 keys besides the HS256 secret, and policy
    jwt_public_key: str | None = None
    jwks: str | None = None
    leeway_s: int = DEFAULT_LEEWAY_S
    max_token_lifetime_s: int = DEFAULT_MAX_LIFETIME_S
    tls: TlsSettings = field(default_factory=TlsSettings)
    """wss:// for clients and peers (`certfile`/`keyfile`), and the CA of wss:// peers."""
    # recovery (wsop/sidecar/history.py): where each user's recent messages are kept
    history: str = "memory"
    """"memory" (on the user's owner), "redis" (Streams: survives a sidecar crash), "off"."""
    history_messages: int = 100
    history_age_s: float = 120.0
    history_memory_mb: int = 256
    """The in-memory backend's cap for the whole sidecar."""

    def __post_init__(self) -> None:
        """Refuse what `wsop sidecar` refuses (port 0: let the OS pick a free one)."""
        check_routing_algorithm(self.algo)
        check_member_name(self.name)
        check_host(self.host)
        check_port(self.port)
        check_positive_int(self.max_frame_bytes, "max_frame_bytes")
        check_seconds(self.close_window_s, "close_window_s")
        check_seconds(self.slow_client_s, "--slow-client", allow_zero=False)
        if self.upstream is not None and not self.upstream.startswith(("ws://", "wss://")):
            raise UsageError(f"upstream must be a ws:// or wss:// URL, got {self.upstream!r}")
        self.timings = PresenceTimings(self.heartbeat_s, self.lease_s, self.presence_wait_s)
        check_history_backend(self.history)
        if not (isinstance(self.history_memory_mb, int) and self.history_memory_mb >= 1):
            raise UsageError(f"history memory must be ≥ 1 MiB, got {self.history_memory_mb}")
        self.history_limits = HistoryLimits(
            self.history_messages, self.history_age_s, self.history_memory_mb * 1024 * 1024
        )
        self.token_verifier()  # key files readable, leeway and lifetime sane

    def token_verifier(self) -> TokenVerifier | None:
        """What client tokens are checked with (None: no key at all, an insecure stack)."""
        return TokenVerifier.from_settings(
            self.secret, self.jwt_public_key, self.jwks, self.leeway_s, self.max_token_lifetime_s
        )
