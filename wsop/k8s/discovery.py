"""Sidecar pods on Kubernetes: who they are, where they listen, which are ready.

Sidecars are the pods matching a label selector (default `ws.operator/enabled=true`)
in one namespace. A pod is a *member* (it takes new connections, it is on the ring)
when it has an IP, is not being deleted, its `Ready` condition is `True` and — when a
Service is named — the Service's EndpointSlices list it as ready. Both checks, because
the pod condition is what the kubelet knows and the slice is what the Service routes
to; a pod the Service has dropped must not own keys.

Members are `{pod name: ws://<podIP>:<port>}`; the port is the sidecar container's
port named `wsop` (see `wsop inject`), else the `--port` default. Pods that are not
members but still have an IP are still asked for their connections by the
rebalancer: what sits on a terminating pod must move.

Parsing is pure (`pod_state`, `ready_in_slices`) over the API's JSON shapes, so every
edge case is a unit test; `discover` is the thin I/O around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsop.checks import is_member_name
from wsop.discovery import Members, PollingMembership
from wsop.errors import WsopError

DEFAULT_SELECTOR = "ws.operator/enabled=true"
SIDECAR_CONTAINER = "wsop-sidecar"
PORT_NAME = "wsop"
DEFAULT_PORT = 9100
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_INTERVAL_S = 2.0


@dataclass(frozen=True)
class PodState:
    """One selected pod as the rebalancer sees it."""

    name: str
    ip: str | None
    port: int
    ready: bool
    reason: str  # "ready", or why not: "no IP", "terminating", "not Ready", …

    @property
    def url(self) -> str:
        return f"ws://{self.ip}:{self.port}"


@dataclass(frozen=True)
class Discovery:
    """The pods a selector found; `members` are the ready ones."""

    namespace: str
    selector: str
    service: str | None
    pods: tuple[PodState, ...]

    @property
    def members(self) -> Members:
        return {p.name: p.url for p in self.pods if p.ready}

    @property
    def reachable(self) -> list[PodState]:
        """Pods we can ask for their connections (ready or not): those with an IP."""
        return [p for p in self.pods if p.ip]

    def where(self) -> str:
        return f"namespace {self.namespace!r} with selector {self.selector!r}"


def sidecar_port(pod: Mapping[str, Any], default: int = DEFAULT_PORT) -> int:
    """The `wsop` port of the sidecar container (else of any container), else `default`."""
    containers = (pod.get("spec") or {}).get("containers") or []
    ordered = sorted(containers, key=lambda c: c.get("name") != SIDECAR_CONTAINER)
    for container in ordered:
        for port in container.get("ports") or []:
            if port.get("name") == PORT_NAME and port.get("containerPort"):
                return int(port["containerPort"])
    sidecar = next((c for c in containers if c.get("name") == SIDECAR_CONTAINER), None)
    if sidecar and sidecar.get("ports"):
        return int(sidecar["ports"][0]["containerPort"])
    return default


def pod_state(
    pod: Mapping[str, Any], in_service: set[str] | None = None, default_port: int = DEFAULT_PORT
) -> PodState:
    """Readiness of one pod (API JSON); `in_service` = ready endpoints, None = no Service."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    name = str(meta.get("name"))
    ip = status.get("podIP") or None
    port = sidecar_port(pod, default_port)
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if not ip:
        reason = "no IP"
    elif not is_member_name(name):  # it could not be a ring member (wsop.checks)
        reason = "name is not a DNS label (RFC 1123)"
    elif meta.get("deletionTimestamp"):
        reason = "terminating"
    elif conditions.get("Ready") != "True":
        reason = f"not Ready ({status.get('phase') or 'unknown phase'})"
    elif in_service is not None and name not in in_service:
        reason = "not ready in the Service's EndpointSlices"
    else:
        reason = "ready"
    return PodState(name, ip, port, reason == "ready", reason)


def ready_in_slices(slices: Iterable[Mapping[str, Any]]) -> set[str]:
    """Names of pods that EndpointSlices list as ready (an unset `ready` means ready)."""
    ready: set[str] = set()
    for s in slices:
        for endpoint in s.get("endpoints") or []:
            ref = endpoint.get("targetRef") or {}
            if ref.get("kind") != "Pod" or not ref.get("name"):
                continue
            if (endpoint.get("conditions") or {}).get("ready") is not False:
                ready.add(ref["name"])
    return ready


def discover(
    cluster: Any,
    namespace: str,
    selector: str = DEFAULT_SELECTOR,
    service: str | None = None,
    default_port: int = DEFAULT_PORT,
) -> Discovery:
    """List the selected pods (and the Service's EndpointSlices) once."""
    from kubernetes import client as k8s

    api = cluster.api
    pods = cluster.call(
        "list",
        "pods",
        namespace,
        k8s.CoreV1Api(api).list_namespaced_pod,
        namespace,
        label_selector=selector,
    )
    in_service = None
    if service:
        slices = cluster.call(
            "list",
            "endpointslices.discovery.k8s.io",
            namespace,
            k8s.DiscoveryV1Api(api).list_namespaced_endpoint_slice,
            namespace,
            label_selector=f"{SERVICE_NAME_LABEL}={service}",
        )
        in_service = ready_in_slices(api.sanitize_for_serialization(slices).get("items") or [])
    states = [
        pod_state(pod, in_service, default_port)
        for pod in api.sanitize_for_serialization(pods).get("items") or []
    ]
    states.sort(key=lambda p: p.name)
    return Discovery(namespace, selector, service, tuple(states))


class KubernetesMembership(PollingMembership):
    """The stack's membership from the API (for the in-cluster LB and sidecars).

    Polls every `interval` seconds (a list of a few pods is cheap, and a poll survives API
    restarts without the resume logic a watch needs). A failed list keeps the last good
    membership (`last_error` says why): an API blip must not empty the ring. The list
    runs in a worker thread, so the event loop keeps relaying meanwhile.
    """

    def __init__(
        self,
        cluster: Any,
        namespace: str,
        selector: str = DEFAULT_SELECTOR,
        service: str | None = None,
        default_port: int = DEFAULT_PORT,
        interval: float = DEFAULT_INTERVAL_S,
    ) -> None:
        super().__init__(interval)
        self.cluster = cluster
        self.namespace = namespace
        self.selector = selector
        self.service = service
        self.default_port = default_port
        self._tick = 0

    def probe(self) -> object:
        self._tick += 1  # the list is the source of truth: always refetch
        return self._tick

    def fetch(self) -> Members:
        try:
            found = discover(
                self.cluster, self.namespace, self.selector, self.service, self.default_port
            )
        except WsopError as exc:  # PollingMembership keeps the last members on OSError
            raise OSError(str(exc)) from None
        return found.members

    async def wait_changed(self) -> Members:
        while True:
            members = await asyncio.to_thread(self._refresh)
            if members != self._returned:
                self._returned = dict(members)
                return dict(members)
            await asyncio.sleep(self.interval)


def kubernetes_source(
    namespace: str,
    selector: str = DEFAULT_SELECTOR,
    service: str | None = None,
    default_port: int = DEFAULT_PORT,
    kubeconfig: Path | None = None,
    context: str | None = None,
    interval: float = DEFAULT_INTERVAL_S,
) -> KubernetesMembership:
    """The `MembershipSource` `wsop.discovery.source_from_flags` will return for
    `--namespace/--selector` (in a pod: the service account; else the kubeconfig)."""
    from wsop.k8s.client import connect

    # `wsop lb`/`sidecar` read no --kubeconfig flag: name what they do read
    where = "pass --kubeconfig PATH" if kubeconfig is not None else "set KUBECONFIG=PATH"
    cluster = connect(kubeconfig, context, where=where)
    return KubernetesMembership(cluster, namespace, selector, service, default_port, interval)
