"""One way to reach the API server, and one translation of its failures into wsop errors.

Every call that leaves the process goes through `Cluster.call` (typed API methods) or
`Cluster.raw_get` (pods/proxy), so a missing kubeconfig, an unreachable server, a 401
or an RBAC 403 reads the same everywhere: one line naming the context, the server and,
for a 403, the verb and resource the Role lacks.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from wsop.errors import BackendError, BackendUnavailable, UsageError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0
IN_CLUSTER = "in-cluster"


@dataclass
class Cluster:
    """An API client plus what error messages need to say where it points."""

    api: k8s.ApiClient
    context: str
    server: str
    timeout: float = DEFAULT_TIMEOUT_S

    def describe(self) -> str:
        return f"context {self.context!r} at {self.server}"

    def call(
        self, verb: str, resource: str, namespace: str, fn: Callable[..., T], *args, **kw
    ) -> T:
        """Call a typed API method; failures become `BackendError`/`BackendUnavailable`."""
        try:
            return fn(*args, _request_timeout=self.timeout, **kw)
        except k8s.ApiException as exc:
            raise api_error(self, exc, verb, resource, namespace) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self.unreachable(exc) from None

    def raw_get(
        self,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        extra_headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes, str]:
        """GET `path` on the API server: (status, body, content type), any status.

        Only transport failures raise (`BackendUnavailable`): the caller decides what a
        4xx/5xx from a proxied pod means.
        """
        headers = {"Accept": "application/json, text/plain;q=0.9, */*;q=0.1"}
        headers.update(extra_headers or {})
        try:
            _, url, headers, _, _ = self.api.param_serialize(
                "GET",
                path,
                query_params=list(query) or None,
                header_params=headers,
                auth_settings=["BearerToken"],
            )
            resp = self.api.call_api(
                "GET", url, header_params=headers, _request_timeout=self.timeout
            )
            resp.read()
        except k8s.ApiException as exc:  # TLS and similar failures surface as status 0
            raise self.unreachable(exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self.unreachable(exc) from None
        return resp.status, resp.data or b"", resp.getheader("content-type") or ""

    def unreachable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(
            f"cannot reach the Kubernetes API ({self.describe()}): {_reason(exc)}"
        )


def pod_proxy_path(namespace: str, pod: str, port: int, path: str) -> str:
    """`/api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH` (the pods/proxy subresource)."""
    return (
        f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/"
        f"{quote(pod, safe='')}:{int(port)}/proxy/{path.lstrip('/')}"
    )


def api_error(
    cluster: Cluster, exc: k8s.ApiException, verb: str, resource: str, namespace: str
) -> BackendError:
    """One line for an API refusal; a 403 names the verb and resource the Role lacks."""
    status = exc.status or 0
    detail = status_message(exc.body)
    where = f"in namespace {namespace!r} " if namespace else ""
    if status == 401:
        return BackendError(
            f"the Kubernetes API rejected the credentials of {cluster.describe()} "
            f"(401 Unauthorized){': ' + detail if detail else ''}"
        )
    if status == 403:
        return BackendError(
            f"forbidden: cannot {verb} {resource} {where}({cluster.describe()}); grant "
            f"'{verb}' on '{resource}' in a Role (see `wsop manifests`)"
            f"{': ' + detail if detail else ''}"
        )
    return BackendError(
        f"Kubernetes API error {status} {exc.reason or ''} while trying to {verb} "
        f"{resource} {where}({cluster.describe()}){': ' + detail if detail else ''}".replace(
            "  ", " "
        )
    )


def status_message(body: Any) -> str:
    """The `message` of a Kubernetes Status body, else the body's first line (short)."""
    if not body:
        return ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return " ".join(doc["message"].split())[:300]
    except ValueError:
        pass
    return " ".join(text.strip().splitlines()[:1])[:300]


def _reason(exc: BaseException) -> str:
    """'[Errno 111] Connection refused' rather than urllib3's paragraph."""
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    match = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if match:
        return match.group(0).strip()
    if isinstance(exc, k8s.ApiException):
        return str(exc.reason or exc)
    return " ".join(text.split())[:200]


# The kubernetes client parses a kubeconfig with PyYAML and walks it without checking
# shapes: broken YAML is a (multi-line) YAMLError, a list or a number where it expects a
# mapping a TypeError/AttributeError/KeyError. All of them mean "this file is not a
# kubeconfig": the user's input, one line, exit 2.
BAD_KUBECONFIG = (
    ConfigException,
    OSError,
    ValueError,
    yaml.YAMLError,
    TypeError,
    AttributeError,
    KeyError,
)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, yaml.YAMLError | TypeError | AttributeError | KeyError):
        return f"not a valid kubeconfig ({text})"
    return text


def _default_kubeconfig() -> str | None:
    env = os.environ.get("KUBECONFIG")
    if env:
        return env
    default = Path.home() / ".kube" / "config"
    return str(default) if default.exists() else None


def connect(
    kubeconfig: Path | str | None = None,
    context: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    where: str = "pass --kubeconfig PATH",
) -> Cluster:
    """A `Cluster` from `--kubeconfig/--context`, `$KUBECONFIG`, ~/.kube/config, or the
    pod's service account (in-cluster), in that order. Nothing is contacted yet.
    `where`: how the caller's command takes a kubeconfig (`wsop lb` has no --kubeconfig)."""
    cfg = k8s.Configuration()
    path = str(kubeconfig) if kubeconfig is not None else _default_kubeconfig()
    if path is None:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and context is None:
            try:
                k8s_config.load_incluster_config(client_configuration=cfg)
            except ConfigException as exc:
                raise UsageError(f"in-cluster Kubernetes config: {exc}") from None
            return _cluster(cfg, IN_CLUSTER, timeout)
        raise UsageError(
            "no kubeconfig: ~/.kube/config does not exist, $KUBECONFIG is unset and this "
            f"is not a pod; {where}"
        )
    files = [p for p in path.split(os.pathsep) if p]
    if not any(Path(p).expanduser().exists() for p in files):
        raise UsageError(f"kubeconfig not found: {path}")
    try:
        contexts, current = k8s_config.list_kube_config_contexts(path)
    except BAD_KUBECONFIG as exc:
        raise UsageError(f"kubeconfig {path}: {_one_line(exc)}") from None
    names = [c["name"] for c in contexts or []]
    chosen = context or (current or {}).get("name")
    if context is not None and context not in names:
        raise UsageError(
            f"context {context!r} not found in kubeconfig {path} "
            f"(contexts: {', '.join(names) or 'none'})"
        )
    if not chosen:
        raise UsageError(f"kubeconfig {path} has no current context; pass --context NAME")
    try:
        k8s_config.load_kube_config(
            config_file=path, context=chosen, client_configuration=cfg, persist_config=False
        )
    except BAD_KUBECONFIG as exc:
        raise UsageError(f"kubeconfig {path}, context {chosen!r}: {_one_line(exc)}") from None
    return _cluster(cfg, chosen, timeout)


def _cluster(cfg: k8s.Configuration, context: str, timeout: float) -> Cluster:
    cfg.retries = 1  # one retry: an unreachable server must fail in seconds, not minutes
    return Cluster(k8s.ApiClient(cfg), context, cfg.host.rstrip("/"), timeout)


def for_url(server: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> Cluster:
    """A `Cluster` for a bare server URL (tests, `kubectl proxy`)."""
    cfg = k8s.Configuration()
    cfg.host = server.rstrip("/")
    if token:
        cfg.api_key = {"authorization": f"Bearer {token}"}
    return _cluster(cfg, "(url)", timeout)
