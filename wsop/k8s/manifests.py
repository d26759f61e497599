"""The Kubernetes objects of a wsop stack, as plain dicts (`wsop manifests`, `wsop inject`).

One builder per object, all driven by `Settings`, so the rendered set, the injected
sidecar and the docs agree on names, ports, labels and the Secret's keys:

- Secret `wsop` (not rendered: it holds credentials; create it with kubectl) with keys
  `redis-url`, `jwt-secret`, `admin-token`;
- ConfigMap `wsop-config`: ring algorithm, selector, sidecar Service, ports;
- ServiceAccount + Role + RoleBinding `wsop`: list/watch pods and endpointslices
  (membership), get pods/proxy (the rebalancer's `/connections` and `/move`) — nothing
  else;
- headless Service `wsop-sidecars` over the sidecar pods (its EndpointSlices are the
  readiness the LB and sidecars follow);
- Deployment + Service `wsop-lb`;
- the rebalancer (`wsop rebalance --watch`, its own ServiceAccount and Role with the
  Lease it elects a leader with) and, with a CA, the admission webhook: `wsop.k8s.deploy`;
- optionally a locust worker Deployment.

The LB and sidecar args use the Kubernetes membership flags (`--namespace`,
`--selector`, `--service`) of `wsop.k8s.discovery.kubernetes_source`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsop import __version__
from wsop.k8s.discovery import DEFAULT_PORT, PORT_NAME, SIDECAR_CONTAINER
from wsop.ring.registry import DEFAULT_ALGORITHM

ENABLED_LABEL = "ws.operator/enabled"
DEFAULT_IMAGE = f"localhost/wsop:{__version__}"
"""The tag `make image` builds (docs/kubernetes.md). Fully qualified on purpose: podman,
docker and containerd all name a loaded image `localhost/wsop:V`, so a cluster that was
handed the archive (`kind load image-archive`, `ctr images import`) finds it by the name
the manifests use; a bare `wsop:V` would mean docker.io/library/wsop to containerd."""
NAME = "wsop"
SECRET = "wsop"
CONFIG = "wsop-config"
SIDECAR_SERVICE = "wsop-sidecars"
LB = "wsop-lb"
LB_PORT = 8765
LOCUST_MASTER = "wsop-locust-master"
WEBHOOK = "wsop-webhook"
WEBHOOK_PORT = 8443
WEBHOOK_CERTS_DIR = "wsop-webhook-certs"
"""Where `wsop webhook certs` writes, and where `wsop manifests --webhook` looks for ca.crt."""
REBALANCER = "wsop-rebalancer"
METRICS_PORT = 9102
DRAIN_WAIT_S = 20
"""preStop drain budget (s): must end well inside terminationGracePeriodSeconds (30)."""
SECRET_ENV = (
    ("WSOP_REDIS_URL", "redis-url"),
    ("WSOP_SECRET", "jwt-secret"),
    ("WSOP_ADMIN_TOKEN", "admin-token"),
)


@dataclass(frozen=True)
class Settings:
    namespace: str | None = None
    image: str = DEFAULT_IMAGE
    sidecar_port: int = DEFAULT_PORT
    algo: str = DEFAULT_ALGORITHM
    lb_tls_secret: str | None = None
    """A `kubernetes.io/tls` Secret (tls.crt, tls.key): the LB serves wss:// with it."""

    @property
    def selector(self) -> str:
        return f"{ENABLED_LABEL}=true"


def object_meta(name: str, s: Settings, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if s.namespace:
        meta["namespace"] = s.namespace
    meta["labels"] = {"app.kubernetes.io/part-of": "wsop", **labels}
    return meta


def field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def secret_env() -> list[dict[str, Any]]:
    """Every credential the servers read, from Secret `wsop` (the LB and the sidecars
    refuse to start without WSOP_ADMIN_TOKEN)."""
    return [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}
        for env, key in SECRET_ENV
    ]


def config_env(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"configMapKeyRef": {"name": CONFIG, "key": key}}}


TLS_DIR = "/etc/wsop/tls"


def probes(port: str, scheme: str | None = None) -> dict[str, Any]:
    get: dict[str, Any] = {"httpGet": {"path": "/healthz", "port": port}}
    if scheme:
        get["httpGet"]["scheme"] = scheme
    return {
        "readinessProbe": {**get, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {
            **get,
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
    }


SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""The Pod Security Standard 'restricted', container by container (the image's USER is
numeric, 10001, so the kubelet can check runAsNonRoot)."""


def pod_env() -> list[dict[str, Any]]:
    """The pod's own name and namespace (the downward API): member name, API scope."""
    return [
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ]


def stack_env() -> list[dict[str, Any]]:
    """What the LB and the rebalancer learn from ConfigMap `wsop-config`, so one edit
    there (ring algorithm, selector, Service) reaches every Deployment on its next roll."""
    return [
        config_env("WSOP_ALGO", "algo"),
        config_env("WSOP_SELECTOR", "selector"),
        config_env("WSOP_SIDECAR_SERVICE", "sidecar-service"),
    ]


def container(
    name: str,
    s: Settings,
    args: list[str],
    *,
    cpu: str,
    memory: str,
    memory_limit: str,
    command: str = "wsop",
    security: dict[str, Any] = SECURITY,
    **fields: Any,
) -> dict[str, Any]:
    """One container of the stack's image: restricted security, requests and a memory
    limit always set (a pod without them is the first evicted and the last scheduled)."""
    return {
        "name": name,
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [command],
        "args": args,
        **fields,
        "resources": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"memory": memory_limit},
        },
        "securityContext": security,
    }


def mount_tls(container: dict[str, Any], workload: dict[str, Any], secret: str) -> None:
    """Mount a `kubernetes.io/tls` Secret read-only at TLS_DIR (tls.crt, tls.key)."""
    container["volumeMounts"] = [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}]
    workload["spec"]["template"]["spec"]["volumes"] = [
        {"name": "tls", "secret": {"secretName": secret}}
    ]


def service(name: str, s: Settings, port_name: str, port: int) -> dict[str, Any]:
    """A ClusterIP Service in front of Deployment `name`'s pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(name, s),
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [
                {"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
            ],
        },
    }


def service_account(name: str, s: Settings, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ServiceAccount + Role + RoleBinding, all called `name`."""
    subject: dict[str, Any] = {"kind": "ServiceAccount", "name": name}
    if s.namespace:
        subject["namespace"] = s.namespace
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": object_meta(name, s)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": object_meta(name, s),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": object_meta(name, s),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [subject],
        },
    ]


MEMBERSHIP_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["list", "watch"],
    },
    {"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get"]},
]
"""Follow the members (pods, EndpointSlices) and reach their admin API (pods/proxy)."""


def sidecar_container(s: Settings) -> dict[str, Any]:
    """The container `wsop inject` adds to every enabled Deployment's pods."""
    args = [
        "sidecar",
        "--name=$(POD_NAME)",
        "--host=0.0.0.0",
        f"--port={s.sidecar_port}",
        f"--algo={s.algo}",
        "--namespace=$(POD_NAMESPACE)",
        f"--selector={s.selector}",
        f"--service={SIDECAR_SERVICE}",
    ]
    # Before SIGTERM: move this pod's clients, live, to the other sidecars (`wsop
    # drain`), so a scale-down or rollout closes no client. Within the pod's 30 s
    # grace: 20 s of draining, then the 1012 close window for whatever is left.
    drain = ["wsop", "drain", f"--url=http://127.0.0.1:{s.sidecar_port}", f"--wait={DRAIN_WAIT_S}"]
    return container(
        SIDECAR_CONTAINER,
        s,
        args,
        cpu="100m",
        memory="128Mi",
        memory_limit="512Mi",
        ports=[{"name": PORT_NAME, "containerPort": s.sidecar_port, "protocol": "TCP"}],
        env=[*pod_env(), *secret_env()],
        **probes(PORT_NAME),
        lifecycle={"preStop": {"exec": {"command": drain}}},
    )


def rbac(s: Settings) -> list[dict[str, Any]]:
    return service_account(NAME, s, MEMBERSHIP_RULES)


def config_map(s: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(CONFIG, s),
        "data": {
            "algo": s.algo,
            "selector": s.selector,
            "sidecar-service": SIDECAR_SERVICE,
            "sidecar-port": str(s.sidecar_port),
            "lb-port": str(LB_PORT),
            "locust-master": LOCUST_MASTER,
        },
    }


def sidecar_service(s: Settings) -> dict[str, Any]:
    """Headless: no virtual IP, just EndpointSlices listing the ready sidecar pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(SIDECAR_SERVICE, s),
        "spec": {
            "clusterIP": "None",
            "selector": {ENABLED_LABEL: "true"},
            "publishNotReadyAddresses": False,
            "ports": [{"name": PORT_NAME, "port": s.sidecar_port, "targetPort": PORT_NAME}],
        },
    }


def deployment(
    name: str, s: Settings, replicas: int, container: dict[str, Any], account: str | None = NAME
) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    pod: dict[str, Any] = (
        {"serviceAccountName": account}
        if account
        else {"automountServiceAccountToken": False}  # no API access needed
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(name, s, **labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "app.kubernetes.io/part-of": "wsop"}},
                "spec": {
                    **pod,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                },
            },
        },
    }


def lb(s: Settings) -> list[dict[str, Any]]:
    args = [
        "lb",
        "--name=$(POD_NAME)",
        "--host=0.0.0.0",
        f"--port={LB_PORT}",
        "--algo=$(WSOP_ALGO)",
        "--namespace=$(POD_NAMESPACE)",
        "--selector=$(WSOP_SELECTOR)",
        "--service=$(WSOP_SIDECAR_SERVICE)",
    ]
    lb_container = container(
        LB,
        s,
        args,
        cpu="250m",
        memory="256Mi",
        memory_limit="1Gi",
        ports=[{"name": "ws", "containerPort": LB_PORT, "protocol": "TCP"}],
        env=[*pod_env(), *stack_env(), *secret_env()],
        **probes("ws", "HTTPS" if s.lb_tls_secret else None),
    )
    lb_deployment = deployment(LB, s, 2, lb_container)
    lb_service = service(LB, s, "ws", 80)
    if s.lb_tls_secret:  # wss://: the Secret's files, re-read on SIGHUP after a rotation
        args += [f"--certfile={TLS_DIR}/tls.crt", f"--keyfile={TLS_DIR}/tls.key"]
        mount_tls(lb_container, lb_deployment, s.lb_tls_secret)
        lb_service["spec"]["ports"][0].update(name="wss", port=443)
    return [lb_deployment, lb_service]


def locust_workers(s: Settings, replicas: int = 2) -> dict[str, Any]:
    """locust's own worker mode: workers dial the master named in the ConfigMap and
    fetch the locustfile from it (`--locustfile=-`, locust ≥ 2.23)."""
    worker = container(
        "locust-worker",
        s,
        ["--worker", "--master-host=$(WSOP_LOCUST_MASTER)", "--locustfile=-"],
        cpu="500m",
        memory="256Mi",
        memory_limit="1Gi",
        command="locust",
        security={**SECURITY, "readOnlyRootFilesystem": False},
        env=[config_env("WSOP_LOCUST_MASTER", "locust-master"), *secret_env()[1:2]],
    )
    return deployment("wsop-locust-worker", s, replicas, worker, account=None)


def render(
    s: Settings,
    with_locust_workers: bool = False,
    rebalancer: bool = True,
    webhook_ca: bytes | None = None,
) -> list[dict[str, Any]]:
    """Every object of the stack, in apply order (RBAC and config before workloads).

    `webhook_ca` (the PEM CA of the webhook's serving certificate) adds the admission
    webhook: its Deployment, Service and MutatingWebhookConfiguration."""
    from wsop.k8s import deploy

    objects = [*rbac(s), config_map(s), sidecar_service(s), *lb(s)]
    if rebalancer:
        objects += deploy.rebalancer(s)
    if webhook_ca is not None:
        objects += deploy.webhook(s, webhook_ca)
    if with_locust_workers:
        objects.append(locust_workers(s))
    return objects
