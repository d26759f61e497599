"""Leader election with a coordination.k8s.io/v1 Lease: only one rebalancer acts.

Two rebalancers acting at once would plan against each other's half-done moves. The
rebalancer runs with 2 replicas (one can die or be rescheduled without a gap), so they
elect a leader the way client-go does, on a Lease object both can read:

- **acquire**: the Lease does not exist → create it naming us; it exists, its holder is
  empty (released) or its record has not changed for `leaseDurationSeconds` on *our*
  clock → replace it naming us (`leaseTransitions` + 1);
- **renew**: we hold it → replace it with a fresh `renewTime`, every `renew_every`
  seconds (a third of the duration);
- **release** (clean shutdown): replace it with an empty holder, so the other replica
  takes over at its next try rather than after a full duration;
- every update is a JSON merge patch that carries the `resourceVersion` we read (a
  precondition: the API server answers 409 Conflict when the Lease changed since), so
  two candidates racing for the same Lease cannot both win, as a create of an existing
  Lease is answered 409 AlreadyExists. A conflict is not an error: the loser is simply
  not the leader and tries again later. (client-go sends the whole object with PUT; a
  patch with the same precondition is equivalent, and needs the same `update` verb.)

Staleness is judged on our own monotonic clock — "the record has not changed since we
first saw it, for a full duration" — not by comparing the holder's `renewTime` with our
wall clock, so clock skew between nodes cannot make two leaders. The cost: a candidate
that starts while a dead leader's Lease is still there waits one duration.

Losing the Lease (a renewal that fails or conflicts, or `renew_deadline` passing without
a successful renewal) makes `is_leader` false at once; the rebalancer checks it before
every move (`stop` of `wsop.k8s.executor.execute`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wsop.errors import WsopError

log = logging.getLogger("wsop.lease")

DEFAULT_DURATION_S = 15.0


@dataclass(frozen=True)
class _Observed:
    """The part of the Lease that changes when its holder renews it."""

    holder: str
    renew_time: str | None
    transitions: int


def _now_micro(now: Callable[[], dt.datetime]) -> str:
    """`renewTime`/`acquireTime` are MicroTime: RFC 3339 with microseconds, UTC."""
    return now().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """One candidate for the Lease `name` in `namespace`; call `step()` periodically."""

    def __init__(
        self,
        cluster: Any,
        namespace: str,
        name: str,
        identity: str,
        duration: float = DEFAULT_DURATION_S,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        from kubernetes import client as k8s

        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = float(duration)
        self.renew_every = self.duration / 3
        self.renew_deadline = self.duration * 2 / 3
        self._api = k8s.CoordinationV1Api(cluster.api)
        self._monotonic = monotonic
        self._wall = wall
        self._observed: _Observed | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None
        self.last_error: str | None = None
        self.transitions = 0

    @property
    def is_leader(self) -> bool:
        """True while we hold the Lease and renewed it within `renew_deadline`."""
        if self._renewed_at is None:
            return False
        if self._monotonic() - self._renewed_at > self.renew_deadline:
            self._renewed_at = None
            log.warning(
                "lease %s: not renewed in %.0f s: leadership lost", self.name, self.renew_deadline
            )
            return False
        return True

    @property
    def holder(self) -> str | None:
        return self._observed.holder if self._observed else None

    def step(self) -> bool:
        """Acquire or renew once; whether we are the leader afterwards. Never raises for
        the API's sake: an unreachable API server just means "not leader (yet)"."""
        try:
            self._step()
            self.last_error = None
        except WsopError as exc:
            self.last_error = str(exc)
            log.warning("lease %s: %s", self.name, exc)
        return self.is_leader

    def _step(self) -> None:
        lease = self._read()
        if lease is None:
            self._create()
            return
        spec = lease.get("spec") or {}
        seen = _Observed(
            str(spec.get("holderIdentity") or ""),
            spec.get("renewTime"),
            int(spec.get("leaseTransitions") or 0),
        )
        now = self._monotonic()
        if seen != self._observed:
            self._observed, self._observed_at = seen, now
        mine = seen.holder == self.identity
        free = not seen.holder or now - self._observed_at >= self._duration_of(spec)
        if not mine and not free:
            self._renewed_at = None  # someone else holds it, and renews it
            return
        stamp = _now_micro(self._wall)
        new_spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(round(self.duration)),
            "renewTime": stamp,
            "acquireTime": (spec.get("acquireTime") or stamp) if mine else stamp,
            "leaseTransitions": seen.transitions if mine else seen.transitions + 1,
        }
        if self._write(self._patch, self.name, _patch_body(lease, new_spec)):
            if not mine:
                self.transitions += 1
                log.info("lease %s: acquired (was %s)", self.name, seen.holder or "released")
            self._observed = _Observed(self.identity, stamp, new_spec["leaseTransitions"])
            self._observed_at = now
            self._renewed_at = now
        elif mine:
            self._renewed_at = None

    def _patch(self, name: str, namespace: str, body: dict[str, Any], **kw: Any) -> Any:
        return self._api.patch_namespaced_lease(
            name, namespace, body, _content_type="application/merge-patch+json", **kw
        )

    def _duration_of(self, spec: dict[str, Any]) -> float:
        return float(spec.get("leaseDurationSeconds") or self.duration)

    def _read(self) -> dict[str, Any] | None:
        from kubernetes import client as k8s

        try:
            lease = self._api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.cluster.timeout
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise self._error(exc, "get") from None
        except OSError as exc:
            raise self.cluster.unreachable(exc) from None
        except Exception as exc:  # urllib3 errors
            raise self.cluster.unreachable(exc) from None
        return self.cluster.api.sanitize_for_serialization(lease)

    def _create(self) -> None:
        stamp = _now_micro(self._wall)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(round(self.duration)),
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }
        if self._write(self._api.create_namespaced_lease, None, body):
            now = self._monotonic()
            self.transitions += 1
            self._observed = _Observed(self.identity, stamp, 0)
            self._observed_at = now
            self._renewed_at = now
            log.info("lease %s: created, we lead", self.name)

    def _write(self, fn: Callable[..., Any], name: str | None, body: dict[str, Any]) -> bool:
        """Create/replace; False on a 409 (someone else won the race)."""
        from kubernetes import client as k8s

        args = (name, self.namespace, body) if name else (self.namespace, body)
        try:
            fn(*args, _request_timeout=self.cluster.timeout)
        except k8s.ApiException as exc:
            if exc.status == 409:
                log.info("lease %s: conflict, another candidate wrote first", self.name)
                return False
            raise self._error(exc, "update" if name else "create") from None
        except OSError as exc:
            raise self.cluster.unreachable(exc) from None
        except Exception as exc:  # urllib3 errors
            raise self.cluster.unreachable(exc) from None
        return True

    def _error(self, exc: Any, verb: str) -> WsopError:
        from wsop.k8s.client import api_error

        return api_error(self.cluster, exc, verb, "leases.coordination.k8s.io", self.namespace)

    def release(self) -> None:
        """Give the Lease up (if we hold it): an empty holder, a 1 s duration."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = self._read()
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                return
            released = {
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "renewTime": _now_micro(self._wall),
            }
            if self._write(self._patch, self.name, _patch_body(lease, released)):
                log.info("lease %s: released", self.name)
        except WsopError as exc:
            log.warning("lease %s: could not release: %s", self.name, exc)


def _patch_body(lease: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A merge patch of `spec`, conditional on the Lease still being the one we read."""
    body: dict[str, Any] = {"spec": spec}
    version = (lease.get("metadata") or {}).get("resourceVersion")
    if version:
        body["metadata"] = {"resourceVersion": version}
    return body


class NoElection:
    """The local stack has one rebalancer: it always leads."""

    is_leader = True
    holder = "local"
    last_error = None
    renew_every = 5.0
    transitions = 0

    def step(self) -> bool:
        return True

    def release(self) -> None:
        pass
