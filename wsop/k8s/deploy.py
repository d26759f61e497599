"""The objects that make a stack look after itself: the rebalancer and the webhook.

Rendered by `wsop manifests` next to the LB and the sidecar Service (`manifests.render`):

- **rebalancer** (default; `--no-rebalancer` leaves it out): ServiceAccount, Role and
  RoleBinding `wsop-rebalancer`, and a Deployment of 2 replicas running
  `wsop rebalance --watch` — one acts (the holder of Lease `wsop-rebalancer`), the other
  waits to take over. Its own account because it alone needs the Lease and pods/proxy:
  the sidecars keep theirs to list/watch. `update` on leases is limited to that one
  name; `create` cannot be (RBAC has no resourceNames for create).
- **webhook** (`--webhook`, needs the namespace and the CA): Deployment + Service
  `wsop-webhook` (`wsop webhook serve` over HTTPS, TLS from Secret `wsop-webhook-tls`,
  no API token: it reads nothing from the cluster) and the cluster-scoped
  MutatingWebhookConfiguration, honest about itself:
  - `sideEffects: None` — the webhook only answers;
  - `failurePolicy: Fail` — a labelled pod created while no webhook answers would run
    without its sidecar and never join the ring: better refused (and retried by its
    ReplicaSet) than silently broken. Only pods labelled `ws.operator/enabled: "true"`
    in this namespace are sent (`objectSelector`, `namespaceSelector`), so an outage
    blocks nothing else — the webhook's own pods carry no such label;
  - `reinvocationPolicy: IfNeeded` — safe, the webhook is idempotent.
"""

from __future__ import annotations

import base64
from typing import Any

from wsop.errors import UsageError
from wsop.k8s.manifests import (
    ENABLED_LABEL,
    MEMBERSHIP_RULES,
    METRICS_PORT,
    REBALANCER,
    SECRET,
    TLS_DIR,
    WEBHOOK,
    WEBHOOK_PORT,
    Settings,
    container,
    deployment,
    mount_tls,
    pod_env,
    probes,
    service,
    service_account,
    stack_env,
)

WEBHOOK_TLS_SECRET = f"{WEBHOOK}-tls"
WEBHOOK_NAME = "inject.ws.operator"
REBALANCE_MAX_MOVES = 500
REBALANCE_RATE = 50


def rebalancer_rbac(s: Settings) -> list[dict[str, Any]]:
    leases = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]}
    rules = [
        *MEMBERSHIP_RULES,
        {**leases, "verbs": ["create"]},
        {**leases, "resourceNames": [REBALANCER], "verbs": ["get", "update"]},
    ]
    return service_account(REBALANCER, s, rules)


def rebalancer(s: Settings) -> list[dict[str, Any]]:
    """RBAC + a 2-replica Deployment of `wsop rebalance --watch` (one leader at a time)."""
    args = [
        "rebalance",
        "--watch",
        "--namespace=$(POD_NAMESPACE)",
        "--selector=$(WSOP_SELECTOR)",
        "--service=$(WSOP_SIDECAR_SERVICE)",
        "--algo=$(WSOP_ALGO)",
        f"--lease={REBALANCER}",
        "--identity=$(POD_NAME)",
        f"--metrics-port={METRICS_PORT}",
        f"--max-moves={REBALANCE_MAX_MOVES}",
        f"--rate={REBALANCE_RATE}",
    ]
    admin_token = {  # rides X-Wsop-Admin-Token through pods/proxy
        "name": "WSOP_ADMIN_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "admin-token"}},
    }
    rebalancer_container = container(
        REBALANCER,
        s,
        args,
        cpu="50m",
        memory="128Mi",
        memory_limit="512Mi",
        ports=[{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        env=[*pod_env(), *stack_env(), admin_token],
        livenessProbe=probes("metrics")["livenessProbe"],
    )
    workload = deployment(REBALANCER, s, 2, rebalancer_container, account=REBALANCER)
    workload["spec"]["template"]["metadata"]["annotations"] = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
    }
    return [*rebalancer_rbac(s), workload]


def webhook(s: Settings, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Deployment + Service `wsop-webhook` and the MutatingWebhookConfiguration."""
    if not s.namespace:
        raise UsageError(
            "--webhook needs --namespace: the API server reaches the webhook through a "
            "Service in a namespace"
        )
    args = [
        "webhook",
        "serve",
        f"--cert={TLS_DIR}/tls.crt",
        f"--key={TLS_DIR}/tls.key",
        f"--port={WEBHOOK_PORT}",
        f"--image={s.image}",
        f"--sidecar-port={s.sidecar_port}",
        f"--algo={s.algo}",
    ]
    webhook_container = container(
        WEBHOOK,
        s,
        args,
        cpu="50m",
        memory="96Mi",
        memory_limit="256Mi",
        ports=[{"name": "https", "containerPort": WEBHOOK_PORT, "protocol": "TCP"}],
        **probes("https", scheme="HTTPS"),
    )
    workload = deployment(WEBHOOK, s, 2, webhook_container, account=None)
    mount_tls(webhook_container, workload, WEBHOOK_TLS_SECRET)
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": f"wsop-sidecar-injector-{s.namespace}",  # cluster-scoped: one per stack
            "labels": {"app.kubernetes.io/part-of": "wsop"},
        },
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "clientConfig": {
                    "service": {
                        "name": WEBHOOK,
                        "namespace": s.namespace,
                        "path": "/mutate",
                        "port": 443,
                    },
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                },
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": s.namespace}},
                "objectSelector": {"matchLabels": {ENABLED_LABEL: "true"}},
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": 5,
            }
        ],
    }
    return [workload, service(WEBHOOK, s, "https", 443), config]
