"""`MoveTarget` over the API server's pods/proxy subresource (the Kubernetes path).

Every request is `GET /api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH` authenticated
with the kubeconfig's credentials, so the rebalancer needs no network route to the pods
and RBAC decides who may rebalance (`get` on `pods/proxy`).

The sidecar's admin token travels in the `X-Wsop-Admin-Token` header, not in
`Authorization`: the API server authenticates *us* with `Authorization` and strips it
before proxying, so the sidecar would never see it. Other request headers pass through
the proxy, and a header (unlike a query parameter) stays out of audit logs of URLs. The
sidecar must accept this header as an alternative to `Authorization: Bearer`.

A Kubernetes `Status` document in the answer comes from the API server itself: a 403 is
RBAC (abort, naming the verb and resource), a 401 our credentials (abort), a 404 a pod
that is gone (skip it). Anything else is the sidecar's answer (`sidecar_answer`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from wsop.errors import BackendError
from wsop.k8s.client import Cluster, pod_proxy_path
from wsop.k8s.executor import MemberFailed, SidecarAdmin, sidecar_answer

ADMIN_HEADER = "X-Wsop-Admin-Token"
"""Carries the sidecar admin token through pods/proxy (which consumes `Authorization`)."""


class PodProxyTarget(SidecarAdmin):
    """Reach each pod's admin endpoints through pods/proxy on its sidecar port."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        ports: Mapping[str, int],
        admin_token: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.ports = dict(ports)
        self.admin_token = admin_token

    def _get(self, member: str, path: str, params: list[tuple[str, str]]) -> Any:
        if member not in self.ports:
            raise MemberFailed(member, "not a selected pod (no port known)")
        headers = {ADMIN_HEADER: self.admin_token} if self.admin_token else {}
        url = pod_proxy_path(self.namespace, member, self.ports[member], path)
        status, body, _ = self.cluster.raw_get(url, params, headers)
        api_status = _api_status(body)
        if api_status is not None:
            message = str(api_status.get("message") or api_status.get("reason") or "")
            if status == 403:
                verb = "get"
                raise BackendError(
                    f"forbidden: cannot {verb} pods/proxy in namespace {self.namespace!r} "
                    f"({self.cluster.describe()}); grant '{verb}' on 'pods/proxy' in a Role "
                    f"(see `wsop manifests`): {message}"
                )
            if status == 401:
                raise BackendError(
                    f"the Kubernetes API rejected the credentials of "
                    f"{self.cluster.describe()} (401 Unauthorized): {message}"
                )
            if status >= 400:
                raise MemberFailed(member, f"{path}: API server answered {status}: {message}")
        return sidecar_answer(member, path, status, body)


def _api_status(body: bytes) -> dict[str, Any] | None:
    """The body as a Kubernetes `Status` object, if it is one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        return doc
    return None
