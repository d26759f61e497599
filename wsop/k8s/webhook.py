"""The mutating admission webhook's decision, without any I/O: AdmissionReview in, out.

The API server sends an `AdmissionReview` (admission.k8s.io/v1) for every pod created
in a labelled scope (`wsop manifests --webhook` renders the configuration: pods labelled
`ws.operator/enabled: "true"`, in the stack's namespace). The answer applies exactly what
`wsop inject` applies to a pod template — `wsop.k8s.inject.inject_pod` is shared — as a
JSONPatch against the pod the API server sent:

- a pod that already has a `wsop-sidecar` container is left alone (allowed, no patch),
  which makes the webhook idempotent (`reinvocationPolicy: IfNeeded` may call it twice);
- anything that is not a pod CREATE is allowed untouched (the configuration only asks
  for those, but a hand-written one might ask for more);
- a pod that cannot take the sidecar (an app container already uses its port) is
  refused with the same one-line reason `wsop inject` prints: it asked for the sidecar,
  and a labelled pod without one would never join the ring;
- notes (a pod running as another service account) become admission `warnings`, which
  kubectl shows to whoever created the pod.

The webhook has no side effects (it only reads the request), so `sideEffects: None` is
true, and dry-run requests are answered the same way.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from wsop.errors import InputError
from wsop.k8s.discovery import SIDECAR_CONTAINER
from wsop.k8s.inject import inject_pod
from wsop.k8s.manifests import Settings

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"


class BadReview(ValueError):
    """The request body is not an AdmissionReview v1 with a request uid (HTTP 400)."""


def _dict(value: Any) -> dict[str, Any]:
    """`value` if it is a mapping, else empty: a review is the API server's JSON, but a
    malformed one must earn an answer (denied, or admitted untouched), never a dropped
    connection."""
    return value if isinstance(value, dict) else {}


def has_sidecar(pod: dict[str, Any]) -> bool:
    containers = _dict(pod.get("spec")).get("containers")
    if not isinstance(containers, list):
        return False
    return any(isinstance(c, dict) and c.get("name") == SIDECAR_CONTAINER for c in containers)


def mutate_pod(pod: dict[str, Any], settings: Settings) -> tuple[dict[str, Any], list[str]]:
    """The pod with the sidecar (a copy), and the notes; `InputError` if it cannot take it.

    `"default"` counts as no service account: the API server sets it before webhooks run.
    """
    out = copy.deepcopy(pod)
    meta = _dict(out.get("metadata"))
    name = meta.get("name") or f"{meta.get('generateName') or ''}<generated>"
    notes: list[str] = []
    inject_pod(out, settings, f"Pod {name}", notes, unset_accounts=(None, "", "default"))
    return out, notes


def json_patch(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """RFC 6902 operations turning `before` into `after` (objects recurse; a list that
    only grew gets `add …/-` per new item, any other list change replaces the list)."""
    if isinstance(before, dict) and isinstance(after, dict):
        ops: list[dict[str, Any]] = []
        for key in before:
            if key not in after:
                ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        for key, value in after.items():
            child = f"{path}/{_escape(key)}"
            if key not in before:
                ops.append({"op": "add", "path": child, "value": value})
            else:
                ops += json_patch(before[key], value, child)
        return ops
    grown = isinstance(before, list) and isinstance(after, list) and after[: len(before)] == before
    if grown:
        return [{"op": "add", "path": f"{path}/-", "value": v} for v in after[len(before) :]]
    if before == after and type(before) is type(after):
        return []
    return [{"op": "replace", "path": path, "value": after}]


def _escape(key: str) -> str:
    """A JSON Pointer token: `~` → `~0`, `/` → `~1` (`ws.operator/enabled`)."""
    return str(key).replace("~", "~0").replace("/", "~1")


def parse_review(body: bytes) -> dict[str, Any]:
    """The `request` of an AdmissionReview v1 body (`BadReview` otherwise)."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise BadReview("the body is not JSON") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise BadReview(f"expected kind {KIND}")
    if doc.get("apiVersion") != API_VERSION:
        raise BadReview(f"expected apiVersion {API_VERSION}, got {doc.get('apiVersion')!r}")
    request = doc.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise BadReview("no request.uid in the AdmissionReview")
    return request


def review(request: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The AdmissionReview answering `request` (see the module docstring)."""
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    kind = _dict(request.get("kind"))  # (malformed: not a Pod, admitted untouched)
    pod = request.get("object")
    is_pod_create = (
        request.get("operation") == "CREATE"
        and kind.get("group", "") == ""
        and kind.get("kind") == "Pod"
        and isinstance(pod, dict)
    )
    if is_pod_create and not has_sidecar(pod):
        try:
            mutated, notes = mutate_pod(pod, settings)
        except InputError as exc:
            response["allowed"] = False
            response["status"] = {"code": 400, "reason": "BadRequest", "message": str(exc)}
        else:
            ops = json_patch(pod, mutated)
            if ops:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
            if notes:
                response["warnings"] = notes
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def describe(request: dict[str, Any], answer: dict[str, Any]) -> str:
    """One log line per review: what was asked and what we did."""
    meta = _dict(_dict(request.get("object")).get("metadata"))
    name = meta.get("name") or f"{meta.get('generateName') or ''}*"
    response = answer["response"]
    if not response["allowed"]:
        outcome = f"denied: {response['status']['message']}"
    elif "patch" in response:
        outcome = "injected"
    else:
        outcome = "unchanged"
    dry = " (dry run)" if request.get("dryRun") else ""
    return (
        f"{request.get('operation')} {_dict(request.get('kind')).get('kind')} "
        f"{request.get('namespace') or '-'}/{name}: {outcome}{dry}"
    )
