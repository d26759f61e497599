"""What tells the watch-driven rebalancer that the sidecars changed.

Each source runs in its own thread and calls `on_change(reason)` whenever the set of
ready sidecars differs from the last one it reported (the first read counts as a
change: a rebalancer that starts after a scale-up must still act on it):

- `SliceWatch` — Kubernetes: the EndpointSlices of the sidecar Service, through the API's
  watch (a list for the starting state and its resourceVersion, then a watch from there;
  `410 Gone` or a dropped stream → list again; an API failure → back off and retry).
  Slices are what the Service routes to, and a pod's readiness reaches them, so a
  scale-up, a scale-down, a crash and a failing readiness probe all show up here. The
  run itself re-discovers pods and slices (`wsop.k8s.discovery.discover`); the watch
  only says *when*.
- `MembersFilePoll` — the local stack: the members file `wsop up`/`wsop scale` write,
  polled (the same change token as the stack's own processes use: mtime, size, inode).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsop.errors import WsopError
from wsop.k8s.discovery import SERVICE_NAME_LABEL, ready_in_slices

log = logging.getLogger("wsop.watch")

OnChange = Callable[[str], None]
WATCH_TIMEOUT_S = 300
IDLE_S = 60.0
BACKOFF_S = (1.0, 2.0, 5.0, 10.0)


class SliceWatch:
    """Ready pods of Service `service`'s EndpointSlices, followed with list + watch."""

    def __init__(
        self,
        cluster: Any,
        namespace: str,
        service: str,
        on_change: OnChange,
        timeout_s: int = WATCH_TIMEOUT_S,
        idle_s: float = IDLE_S,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.service = service
        self.on_change = on_change
        self.timeout_s = timeout_s
        self.idle_s = idle_s
        self.selector = f"{SERVICE_NAME_LABEL}={service}"
        self.slices: dict[str, set[str]] = {}
        self.reported: frozenset[str] | None = None
        self.lists = 0
        self.watches = 0
        self.last_error: str | None = None

    def run(self, stop: threading.Event) -> None:
        """List, watch, repeat, until `stop` is set (run it in a daemon thread)."""
        failures = 0
        while not stop.is_set():
            try:
                version = self._list()
                failures = 0
                self._watch(version, stop)
            except Exception as exc:  # a WsopError, or a reply the client cannot parse:
                # the thread must outlive any of them, or the rebalancer goes deaf
                self.last_error = str(exc) if isinstance(exc, WsopError) else repr(exc)[:300]
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                log.warning("endpointslice watch: %s (retrying in %.0f s)", exc, delay)
                stop.wait(delay)

    def _list(self) -> str | None:
        from kubernetes import client as k8s

        api = k8s.DiscoveryV1Api(self.cluster.api)
        found = self.cluster.call(
            "list",
            "endpointslices.discovery.k8s.io",
            self.namespace,
            api.list_namespaced_endpoint_slice,
            self.namespace,
            label_selector=self.selector,
        )
        raw = self.cluster.api.sanitize_for_serialization(found)
        self.lists += 1
        self.slices = {
            str((item.get("metadata") or {}).get("name")): ready_in_slices([item])
            for item in raw.get("items") or []
        }
        self._report("listed")
        return (raw.get("metadata") or {}).get("resourceVersion")

    def _watch(self, version: str | None, stop: threading.Event) -> None:
        """Follow events from `version` until `stop`, a 410 or a failure. A stream the
        server ends (`timeout_s`) or that stays silent for `idle_s` is opened again from
        the last resourceVersion seen, without a new list."""
        import urllib3
        from kubernetes import client as k8s
        from kubernetes import watch

        api = k8s.DiscoveryV1Api(self.cluster.api)
        stream = watch.Watch()
        stream.resource_version = version
        while not stop.is_set():
            self.watches += 1
            try:
                for event in stream.stream(
                    api.list_namespaced_endpoint_slice,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=stream.resource_version,
                    timeout_seconds=self.timeout_s,
                    allow_watch_bookmarks=True,
                    _request_timeout=(self.cluster.timeout, self.idle_s),
                ):
                    if stop.is_set():
                        stream.stop()
                        return
                    self._apply(event.get("type"), event.get("raw_object") or {})
            except k8s.ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: list again
                    log.info("endpointslice watch: 410 Gone, listing again")
                    return
                from wsop.k8s.client import api_error

                raise api_error(
                    self.cluster, exc, "watch", "endpointslices.discovery.k8s.io", self.namespace
                ) from None
            except urllib3.exceptions.ReadTimeoutError:
                continue  # silence is fine: watch again from where we were
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise self.cluster.unreachable(exc) from None

    def _apply(self, kind: str | None, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        if kind in ("ADDED", "MODIFIED"):
            self.slices[name] = ready_in_slices([obj])
        elif kind == "DELETED":
            self.slices.pop(name, None)
        else:  # BOOKMARK: only a newer resourceVersion (the client keeps track of it)
            return
        self._report(f"endpointslice {name} {kind.lower()}")

    def _report(self, why: str) -> None:
        ready = frozenset().union(*self.slices.values()) if self.slices else frozenset()
        if ready != self.reported:
            before = self.reported
            self.reported = ready
            added = sorted(ready - (before or frozenset()))
            removed = sorted((before or frozenset()) - ready)
            detail = ", ".join([*(f"+{n}" for n in added), *(f"-{n}" for n in removed)])
            self.on_change(f"{why}: {detail or 'no ready sidecar'}")


class MembersFilePoll:
    """The local stack's members file, polled every `interval` seconds."""

    def __init__(self, path: Path, on_change: OnChange, interval: float = 0.5) -> None:
        from wsop.discovery import RegistryFileMembership

        self.source = RegistryFileMembership(path, interval)
        self.on_change = on_change
        self.interval = interval
        self.reported: dict[str, str] | None = None

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            members = self.source.current()
            if members != self.reported:
                before = self.reported or {}
                self.reported = members
                added = sorted(set(members) - set(before))
                removed = sorted(set(before) - set(members))
                detail = ", ".join([*(f"+{n}" for n in added), *(f"-{n}" for n in removed)])
                self.on_change(f"members file: {detail or 'changed'}")
            stop.wait(self.interval)
