"""Trunks: one persistent LB → sidecar connection carrying many clients' byte streams.

- `codec`: the record format (pure): OPEN, DATA, CLOSE, RESET, CREDIT, PING/PONG, GOAWAY.
- `channel`: one client's stream on a trunk, an asyncio transport of its own with
  per-channel credit (flow control), so the protocols that run on a TCP socket today
  run on a channel unchanged.
- `mux`: the trunk itself, an asyncio protocol on the real socket: records in, records
  out, one write per loop pass for all its channels.
- `serving`: the sidecar's glue: a channel becomes a websockets server connection.

See docs/trunks.md.
"""

DEFAULT_PER_SIDECAR = 2
"""`wsop lb --trunks` by default: 0.74× the CPU per team delivery and 0.85× per direct
message of one connection per client, same throughput (docs/benchmarks.md, "LB ↔
sidecar trunks")."""

MAX_PER_SIDECAR = 64


def check_trunks(n: int) -> None:
    """Refuse a trunk count the LB would refuse, before anything starts (`wsop up` too)."""
    from wsop.errors import UsageError

    if not 0 <= n <= MAX_PER_SIDECAR:
        raise UsageError(f"--trunks must be 0..{MAX_PER_SIDECAR}, got {n}")
