"""The one canonical encoding of a placement key, shared by every algorithm.

The load balancer and every sidecar must hash *the same bytes* for a connection, so the
encoding lives here and nowhere else. A key is `(tenant, user)`; it is encoded as
`f"{tenant}\\x1f{user}"` in UTF-8. The ASCII unit separator (0x1F) cannot appear in a
tenant name (we refuse it), so the encoding is unambiguous: ("a", "b\\x1fc") and
("a\\x1fb", "c") can never collide. Integer and string user ids with the same text
("42" and 42) are the same key, because the CLI only ever sees text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import xxhash

from wsop.errors import UsageError

SEPARATOR = "\x1f"

Key = tuple[str, str | int]
"""A placement key: (tenant, user)."""

hash64 = xxhash.xxh3_64_intdigest
"""The 64-bit hash every algorithm applies to encoded keys (xxh3, seed 0)."""


def encode_key(key: Key) -> bytes:
    """Encode `(tenant, user)` into the canonical bytes every process hashes."""
    tenant, user = key
    if SEPARATOR in tenant:
        raise UsageError(f"tenant {tenant!r} contains the reserved separator 0x1F")
    return f"{tenant}{SEPARATOR}{user}".encode()


def encode_keys(keys: Iterable[Key]) -> list[bytes]:
    """Encode many keys (same rules as `encode_key`)."""
    return [encode_key(key) for key in keys]


def hash_keys(encoded: Sequence[bytes]) -> np.ndarray:
    """xxh3-64 of each encoded key, as a uint64 array (one C call per key, no Python loop)."""
    return np.fromiter(map(hash64, encoded), dtype=np.uint64, count=len(encoded))


def synthetic_keys(count: int, tenant: str = "t0") -> list[bytes]:
    """`count` encoded keys `(tenant, 0..count-1)`: the deterministic sample `show`/`diff` use."""
    if count <= 0:
        raise UsageError(f"the number of keys must be positive, got {count}")
    prefix = f"{tenant}{SEPARATOR}".encode()
    return [prefix + str(user).encode() for user in range(count)]
