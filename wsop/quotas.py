"""Per-tenant limits a stack enforces, and the token bucket that paces a connection.

Without limits one client could open thousands of connections, send as fast as its
socket allows, or queue team messages to a million recipients each: every other tenant
on the same sidecars would pay for it. So a stack has defaults, and a quotas file may
override them per tenant (`--quotas FILE`, JSON or YAML)::

    {"default": {"connections_per_user": 32, "messages_per_second": 1000},
     "tenants": {"acme": {"connections_per_tenant": 50000, "max_recipients": 2000000}}}

A limit of 0 means none. What each one does when exceeded:

- `connections_per_user`, `connections_per_tenant`: the handshake is refused (HTTP 429,
  with which limit); counted across every sidecar (in Redis);
- `messages_per_second` (burst: twice as many): the message gets a `rate_limited`
  error frame, the connection stays;
- `max_recipients`: a team message resolving to more online recipients gets a
  `too_many_recipients` error frame and is not sent;
- `publishes_per_second` (burst: twice as many): per publisher (a tenant's publish
  token, by its `sub`) on each sidecar, for `POST /publish`; over it: 429
  `rate_limited`.

Pure: parsing, validation and the bucket; the sidecar applies them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

from wsop.checks import is_finite_number
from wsop.errors import InputError, UsageError
from wsop.names import check_tenant

DEFAULT_CONNECTIONS_PER_USER: Final = 32
DEFAULT_MESSAGES_PER_SECOND: Final = 1000.0
DEFAULT_MAX_RECIPIENTS: Final = 1_000_000
DEFAULT_PUBLISHES_PER_SECOND: Final = 1000.0
_RATES: Final = ("messages_per_second", "publishes_per_second")


@dataclass(frozen=True, slots=True)
class Limits:
    """One tenant's limits (0: no limit)."""

    connections_per_user: int = DEFAULT_CONNECTIONS_PER_USER
    connections_per_tenant: int = 0
    messages_per_second: float = DEFAULT_MESSAGES_PER_SECOND
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    publishes_per_second: float = DEFAULT_PUBLISHES_PER_SECOND

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            # finite too: JSON's 1e400 is inf (int(inf) overflows below) and YAML's .nan
            # compares false with everything, so a NaN rate would never limit anything
            if not is_finite_number(value) or value < 0:  # type: ignore[operator]
                raise UsageError(f"quota {f.name} must be a number >= 0 (0: none), got {value!r}")
            if f.name not in _RATES and value != int(value):
                raise UsageError(f"quota {f.name} must be a whole number, got {value!r}")

    def merged(self, overrides: Mapping[str, Any], where: str) -> Limits:
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            known = ", ".join(f.name for f in fields(self))
            raise InputError(f"{where}: unknown quota(s) {', '.join(sorted(unknown))}; {known}")
        try:
            return replace(self, **overrides)
        except UsageError as exc:
            raise InputError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Quotas:
    """The stack's default limits and its per-tenant overrides."""

    default: Limits = Limits()
    tenants: Mapping[str, Limits] | None = None

    def of(self, tenant: str) -> Limits:
        if self.tenants:
            return self.tenants.get(tenant, self.default)
        return self.default

    @classmethod
    def parse(cls, data: Any, where: str, base: Limits | None = None) -> Quotas:
        """A quotas document (see the module docstring) over `base` defaults."""
        if not isinstance(data, Mapping) or set(data) - {"default", "tenants"}:
            raise InputError(f"{where}: expected an object with 'default' and/or 'tenants'")
        default = (base or Limits()).merged(_object(data.get("default", {}), where), where)
        tenants = _object(data.get("tenants", {}), where)
        for name in tenants:  # the name a connection's token carries: same rule as there
            try:  # (a YAML key `7:` is the int 7: tenant "7", as before)
                check_tenant(str(name) if type(name) is int else name)
            except UsageError as exc:
                raise InputError(f"{where}: {exc}") from None
        per_tenant = {
            str(name): default.merged(_object(limits, f"{where}: {name}"), f"{where}: {name}")
            for name, limits in tenants.items()
        }
        return cls(default, per_tenant)

    @classmethod
    def load(cls, path: Path, base: Limits | None = None) -> Quotas:
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputError(f"cannot read quotas file {path}: {exc.strerror or exc}") from None
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise InputError(f"{path}: not valid YAML ({exc})") from None
        else:
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise InputError(f"{path}: not valid JSON ({exc})") from None
        return cls.parse(data, str(path), base)


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: expected an object, got {type(value).__name__}")
    return value


class TokenBucket:
    """`rate` tokens a second, up to `burst`; `take` spends one if there is one.

    Per connection, one `take` per message: a float compare and two assignments."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True
