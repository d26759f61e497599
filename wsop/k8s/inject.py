"""`wsop inject`: add the wsop sidecar to the Deployments that ask for it.

A Deployment opts in with the label `ws.operator/enabled: "true"` on itself. For each
one, injection makes the pod template carry:

- the `wsop-sidecar` container (`manifests.sidecar_container`), replacing an older
  copy of it — so a second run, or a run with the same flags, changes nothing;
- the same label on the pod template (discovery selects *pods* by it);
- `serviceAccountName: wsop` when the template names none (the sidecar lists pods);
  a template that already names one keeps it, with a note to bind the Role to it.

Every other field and document passes through untouched (PyYAML does not keep
comments). A port already used by an app container is refused, not doubled.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

from wsop.errors import InputError
from wsop.k8s.discovery import SIDECAR_CONTAINER
from wsop.k8s.manifests import ENABLED_LABEL, NAME, Settings, sidecar_container


@dataclass
class InjectResult:
    documents: list[Any]
    injected: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_yaml(self) -> str:
        return dump_all(self.documents)


def load_all(text: str, source: str) -> list[Any]:
    """Every document of a YAML stream; a parse error names the source's line."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if mark is not None:
            raise InputError(
                f"{source}: invalid YAML at line {mark.line + 1}, column {mark.column + 1}: "
                f"{problem}"
            ) from None
        raise InputError(f"{source}: invalid YAML: {problem}") from None
    documents = [d for d in docs if d is not None]
    for i, doc in enumerate(documents):
        _check_acyclic(doc, f"{source}: document {i + 1}")
    return documents


def _check_acyclic(doc: Any, where: str) -> None:
    """Refuse a document that contains itself (`a: &a [*a]`): YAML anchors may build a
    cycle, which no Kubernetes object is and which copying or dumping it would chase
    until RecursionError. Shared sub-objects (an anchor used twice) are fine."""
    stack: list[tuple[Any, frozenset[int]]] = [(doc, frozenset())]
    while stack:
        node, above = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if id(node) in above:
            raise InputError(f"{where}: a YAML alias refers to its own anchor (a cycle)")
        children = node.values() if isinstance(node, dict) else node
        inner = above | {id(node)}
        stack.extend((child, inner) for child in children)


class _PlainDumper(yaml.SafeDumper):
    """No `&id001` anchors for repeated sub-objects: kubectl users read this YAML."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_all(documents: list[Any]) -> str:
    return yaml.dump_all(
        documents,
        Dumper=_PlainDumper,
        sort_keys=False,
        default_flow_style=False,
        explicit_start=True,
        width=100,
    )


def enabled(doc: Any, where: str = "<stdin>") -> bool:
    """Whether `doc` is a Deployment asking for the sidecar; a Deployment whose metadata
    or labels are not mappings is refused here, naming the document."""
    if not isinstance(doc, dict) or doc.get("kind") != "Deployment":
        return False
    labels = _mapping(_mapping(doc, "metadata", where, create=False), "labels", where, False)
    return str(labels.get(ENABLED_LABEL)).lower() == "true"


def inject(text: str, settings: Settings, source: str = "<stdin>") -> InjectResult:
    """Inject the sidecar into every enabled Deployment of the YAML stream `text`."""
    docs = load_all(text, source)
    result = InjectResult(documents=[])
    for i, doc in enumerate(docs):
        if not enabled(doc, f"{source}: document {i + 1} (a Deployment)"):
            result.documents.append(doc)
            continue
        name = str(doc["metadata"].get("name") or f"document {i + 1}")
        updated = inject_deployment(doc, settings, f"{source}: Deployment {name}", result.notes)
        (result.injected if updated != doc else result.unchanged).append(name)
        result.documents.append(updated)
    return result


def inject_deployment(
    doc: dict[str, Any], settings: Settings, where: str, notes: list[str]
) -> dict[str, Any]:
    """A copy of the Deployment `doc` with the sidecar in its pod template."""
    out = copy.deepcopy(doc)
    spec = _mapping(out, "spec", where)
    template = _mapping(spec, "template", where)
    inject_pod(template, settings, where, notes, prefix="spec.template.")
    return out


def inject_pod(
    pod: dict[str, Any],
    settings: Settings,
    where: str,
    notes: list[str],
    prefix: str = "",
    unset_accounts: tuple[str | None, ...] = (None,),
) -> None:
    """Add the sidecar to `pod` (a Pod or a pod template: `metadata` + `spec`), in place.

    The one place that decides what injection means, shared by `wsop inject` (pod
    templates) and `wsop webhook` (pods at admission). `unset_accounts` are the
    `serviceAccountName` values that count as "none named": the webhook adds
    `"default"`, because the API server's ServiceAccount admission plugin has already
    filled that in by the time a mutating webhook sees the pod.
    """
    spec = _mapping(pod, "spec", where)
    labels = _mapping(_mapping(pod, "metadata", where), "labels", where)
    labels[ENABLED_LABEL] = "true"
    containers = spec.setdefault("containers", [])
    if not isinstance(containers, list):
        raise InputError(f"{where}: {prefix}spec.containers must be a list")
    sidecar = sidecar_container(settings)
    for c in containers:
        if not isinstance(c, dict) or c.get("name") == SIDECAR_CONTAINER:
            continue
        for port in _list(c, "ports", f"{where}: container {c.get('name')!r}"):
            if isinstance(port, dict) and port.get("containerPort") == settings.sidecar_port:
                raise InputError(
                    f"{where}: container {c.get('name')!r} already uses port "
                    f"{settings.sidecar_port}; pass --port with a free one"
                )
    kept = [
        c for c in containers if not (isinstance(c, dict) and c.get("name") == SIDECAR_CONTAINER)
    ]
    token_mount = _service_account_mount(kept, where)
    if token_mount is not None:
        sidecar["volumeMounts"] = [token_mount]
    spec["containers"] = [*kept, sidecar]
    account = spec.get("serviceAccountName")
    if account in unset_accounts:
        spec["serviceAccountName"] = NAME
    elif account != NAME:
        notes.append(
            f"{where} runs as service account {account!r}: bind Role {NAME!r} to it "
            "(the sidecar lists pods and endpointslices)"
        )


SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def _service_account_mount(containers: list[Any], where: str) -> dict[str, Any] | None:
    """The API token mount an app container already has (a Pod at admission time).

    The ServiceAccount admission plugin mounts the token into every container *before*
    mutating webhooks run, so a container a webhook adds would have none; the sidecar
    needs it to list pods. A pod template (`wsop inject`) has no such mount yet: the
    plugin adds it to every container, the sidecar included, when the pod is created.
    """
    for c in containers:
        if not isinstance(c, dict):
            continue
        for mount in _list(c, "volumeMounts", f"{where}: container {c.get('name')!r}"):
            if isinstance(mount, dict) and mount.get("mountPath") == SERVICE_ACCOUNT_PATH:
                return {k: mount[k] for k in ("name", "mountPath", "readOnly") if k in mount}
    return None


def _mapping(parent: dict[str, Any], key: str, where: str, create: bool = True) -> dict[str, Any]:
    """`parent[key]` as a mapping (an absent or null one: an empty one, added to `parent`
    when `create`); anything else is the input's error, named."""
    value = parent.get(key)
    if value is None:
        value = {}
        if create:
            parent[key] = value
    if not isinstance(value, dict):
        raise InputError(f"{where}: {key} must be a mapping, got {type(value).__name__}")
    return value


def _list(parent: dict[str, Any], key: str, where: str) -> list[Any]:
    """`parent[key]` as a list (absent or null: empty); anything else is refused."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError(f"{where}: {key} must be a list, got {type(value).__name__}")
    return value
