"""`wsop webhook`: real AdmissionReview v1 requests (pods built with the kubernetes client's
models) posted over real HTTPS to the webhook server, the JSONPatch applied with an
independent implementation (jsonpatch) and the patched pod validated offline against the
Kubernetes schemas; `wsop webhook certs` and `wsop manifests --webhook`."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import signal
import ssl
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client as k8s
from typer.testing import CliRunner

from wsop.cli.main import app
from wsop.k8s.certs import issue
from wsop.k8s.inject import SERVICE_ACCOUNT_PATH, inject
from wsop.k8s.manifests import Settings
from wsop.k8s.webhook import describe, json_patch
from wsop.k8s.webhook import review as answer_review
from wsop.k8s.webhook_server import WebhookServer

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.37.0"
IMAGE = "registry.example/wsop:test"
SETTINGS = Settings(image=IMAGE)
runner = CliRunner()
serialize = k8s.ApiClient().sanitize_for_serialization


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    issue(out, "wsop-webhook", "chat", extra_names=("127.0.0.1", "localhost"))
    return out


@pytest.fixture
def server(certs):
    logs: list[str] = []
    srv = WebhookServer(
        ("127.0.0.1", 0), SETTINGS, certs / "tls.crt", certs / "tls.key", logs.append
    )
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    srv.logs = logs  # type: ignore[attr-defined]
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def client_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))  # verifies chain and hostname
    return ctx


def post(port: int, ca: Path, body: bytes, path: str = "/mutate") -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(ca), timeout=10)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def app_pod(account: str = "default", token_mount: bool = True, port: int = 8080) -> dict:
    """A pod as the API server hands it to a mutating webhook: the ServiceAccount plugin
    has already set the account and mounted its token."""
    mounts = (
        [
            k8s.V1VolumeMount(
                name="kube-api-access-x1z9q", mount_path=SERVICE_ACCOUNT_PATH, read_only=True
            )
        ]
        if token_mount
        else None
    )
    pod = k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            generate_name="chat-7d9f-",
            namespace="chat",
            labels={"app": "chat", "ws.operator/enabled": "true"},
        ),
        spec=k8s.V1PodSpec(
            service_account_name=account,
            containers=[
                k8s.V1Container(
                    name="app",
                    image="chat:1.4",
                    ports=[k8s.V1ContainerPort(container_port=port, name="http")],
                    volume_mounts=mounts,
                )
            ],
            volumes=[
                k8s.V1Volume(
                    name="kube-api-access-x1z9q",
                    projected=k8s.V1ProjectedVolumeSource(
                        sources=[
                            k8s.V1VolumeProjection(
                                service_account_token=k8s.V1ServiceAccountTokenProjection(
                                    path="token", expiration_seconds=3607
                                )
                            )
                        ]
                    ),
                )
            ]
            if token_mount
            else None,
        ),
    )
    return serialize(pod)


def admission_review(obj: dict, operation: str = "CREATE", kind: str = "Pod") -> dict:
    resource = {"group": "", "version": "v1", "resource": kind.lower() + "s"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": resource,
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": resource,
            "namespace": "chat",
            "operation": operation,
            "userInfo": serialize(
                k8s.V1UserInfo(
                    username="system:serviceaccount:kube-system:replicaset-controller",
                    groups=["system:serviceaccounts", "system:authenticated"],
                )
            ),
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def review_over_https(server, certs, review: dict) -> dict:
    status, body = post(server.port, certs / "ca.crt", json.dumps(review).encode())
    assert status == 200, body
    answer = json.loads(body)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == review["request"]["uid"]
    return answer["response"]


def apply_patch(pod: dict, response: dict) -> dict:
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(copy.deepcopy(pod), ops)


def validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- over HTTPS -----------------------------------------------------------------------


def test_a_pod_gets_exactly_what_inject_gives_a_deployment(server, certs):
    pod = app_pod()
    validate(pod)
    response = review_over_https(server, certs, admission_review(pod))
    assert response["allowed"] is True and "warnings" not in response
    patched = apply_patch(pod, response)
    validate(patched)

    assert patched["spec"]["serviceAccountName"] == "wsop"  # "default" counted as none
    assert patched["metadata"]["labels"]["ws.operator/enabled"] == "true"
    app_container, sidecar = patched["spec"]["containers"]
    assert app_container == pod["spec"]["containers"][0]  # the app is untouched
    assert patched["spec"]["volumes"] == pod["spec"]["volumes"]
    # the sidecar gets the API token the ServiceAccount plugin mounted before we ran
    assert sidecar.pop("volumeMounts") == [
        {"name": "kube-api-access-x1z9q", "mountPath": SERVICE_ACCOUNT_PATH, "readOnly": True}
    ]

    # `wsop inject` on a Deployment with the same pod template (before the API server
    # mounted the token) adds the same container
    plain_app = {k: v for k, v in app_container.items() if k != "volumeMounts"}
    template = {"metadata": {"labels": {"app": "chat"}}, "spec": {"containers": [plain_app]}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat", "labels": {"ws.operator/enabled": "true"}},
        "spec": {"selector": {"matchLabels": {"app": "chat"}}, "template": template},
    }
    (injected,) = inject(yaml.safe_dump(deployment), SETTINGS).documents
    injected_pod = injected["spec"]["template"]
    assert injected_pod["spec"]["containers"][1] == sidecar
    assert injected_pod["spec"]["serviceAccountName"] == "wsop"
    assert injected_pod["metadata"]["labels"]["ws.operator/enabled"] == "true"
    assert sidecar["image"] == IMAGE
    secret_env = {e["name"] for e in sidecar["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert "WSOP_ADMIN_TOKEN" in secret_env  # the servers refuse to start without it
    assert any("injected" in line for line in server.logs)


def test_a_pod_that_has_the_sidecar_is_left_alone(server, certs):
    pod = app_pod()
    patched = apply_patch(pod, review_over_https(server, certs, admission_review(pod)))
    again = review_over_https(server, certs, admission_review(patched))
    assert again["allowed"] is True
    assert "patch" not in again and "patchType" not in again


def test_other_operations_and_kinds_pass_untouched(server, certs):
    pod = app_pod()
    for review in (
        admission_review(pod, operation="UPDATE"),
        admission_review({"apiVersion": "v1", "kind": "ConfigMap"}, kind="ConfigMap"),
    ):
        response = review_over_https(server, certs, review)
        assert response["allowed"] is True and "patch" not in response


def test_another_service_account_is_kept_with_a_warning(server, certs):
    pod = app_pod(account="chat-app")
    response = review_over_https(server, certs, admission_review(pod))
    patched = apply_patch(pod, response)
    validate(patched)
    assert patched["spec"]["serviceAccountName"] == "chat-app"
    (warning,) = response["warnings"]
    assert "chat-app" in warning and "bind Role 'wsop'" in warning


def test_a_pod_whose_port_is_taken_is_refused_with_the_reason(server, certs):
    response = review_over_https(server, certs, admission_review(app_pod(port=9100)))
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "already uses port 9100" in response["status"]["message"]
    assert "patch" not in response


def test_http_errors_health_and_tls(server, certs):
    ca = certs / "ca.crt"
    assert post(server.port, ca, b"{not json")[0] == 400
    assert post(server.port, ca, json.dumps({"kind": "AdmissionReview"}).encode())[0] == 400
    old = admission_review(app_pod())
    old["apiVersion"] = "admission.k8s.io/v1beta1"
    status, body = post(server.port, ca, json.dumps(old).encode())
    assert status == 400 and b"admission.k8s.io/v1" in body
    assert post(server.port, ca, b"{}", path="/other")[0] == 404

    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, context=client_context(ca), timeout=5
    )
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"ok\n")
    conn.close()

    other = issue(certs.parent / "other-ca", "x", "y").directory / "ca.crt"
    with pytest.raises(ssl.SSLCertVerificationError):  # the chain really is checked
        post(server.port, other, b"{}")
    plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        plain.request("GET", "/healthz")  # no plaintext on the HTTPS port
        plain.getresponse().read()


def test_malformed_reviews_are_answered_not_dropped(server, certs):
    """A review the API server would never send (but a broken proxy or a fuzzer might):
    an AdmissionReview answer for each, never a dropped connection."""
    for kind, obj in [("Pod", {"spec": 5}), ("Pod", {"spec": {"containers": True}}),
                      ("Pod", {"metadata": True, "spec": {}}), ("Pod", [1])]:  # fmt: skip
        malformed = admission_review(obj, kind=kind)  # type: ignore[arg-type]
        response = review_over_https(server, certs, malformed)
        assert response["allowed"] is False or "patch" not in response
    odd = admission_review(app_pod())
    odd["request"]["kind"] = "Pod"  # not a GroupVersionKind
    assert review_over_https(server, certs, odd) == {"uid": odd["request"]["uid"], "allowed": True}


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70000) | st.sampled_from(["Pod", "", "wsop"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["spec", "containers", "metadata", "name", "ports",
                                       "containerPort", "labels", "kind"]), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(kind=JSONISH | st.just({"group": "", "kind": "Pod"}), obj=JSONISH)
def test_any_request_shape_gets_an_answer(kind, obj):
    """`review` and its log line take any JSON under a uid (property)."""
    request = {"uid": "u", "kind": kind, "operation": "CREATE", "object": obj}
    answer = answer_review(request, SETTINGS)
    assert answer["response"]["uid"] == "u" and isinstance(answer["response"]["allowed"], bool)
    json.dumps(answer)
    assert describe(request, answer)


def test_json_patch_escapes_and_appends():
    before = {"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "x"}]}}
    after = copy.deepcopy(before)
    after["metadata"]["labels"]["ws.operator/enabled"] = "true"
    after["spec"]["containers"].append({"name": "y"})
    ops = json_patch(before, after)
    assert {"op": "add", "path": "/metadata/labels/ws.operator~1enabled", "value": "true"} in ops
    assert {"op": "add", "path": "/spec/containers/-", "value": {"name": "y"}} in ops
    assert jsonpatch.apply_patch(before, ops) == after
    assert json_patch(after, after) == []
    assert jsonpatch.apply_patch(after, json_patch(after, before)) == before


# --- the command ----------------------------------------------------------------------


def test_wsop_webhook_serve_runs_until_sigterm(certs):
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "wsop.cli.main", "webhook", "serve",
            "--cert", str(certs / "tls.crt"), "--key", str(certs / "tls.key"),
            "--host", "127.0.0.1", "--port", "0", "--image", IMAGE,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert "webhook listening on https://127.0.0.1:" in line, proc.stderr.read()
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        review = admission_review(app_pod())
        status, body = post(port, certs / "ca.crt", json.dumps(review).encode())
        assert status == 200
        patched = apply_patch(review["request"]["object"], json.loads(body)["response"])
        assert patched["spec"]["containers"][-1]["image"] == IMAGE
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "CREATE Pod chat/chat-7d9f-*: injected" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_with_missing_certificate_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["webhook", "serve", "--cert", str(tmp_path / "nope.crt")])
    assert result.exit_code == 2
    assert "nope.crt: no such file" in result.stderr and "Traceback" not in result.output


def test_serve_names_the_sidecar_port_flag():
    result = runner.invoke(app, ["webhook", "serve", "--sidecar-port", "0"])
    assert result.exit_code == 2 and "--sidecar-port must be 1–65535" in result.stderr


def test_certs_command_writes_a_ca_and_a_serving_certificate(tmp_path):
    out = tmp_path / "c"
    result = runner.invoke(app, ["webhook", "certs", "-n", "chat", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert "wsop-webhook.chat.svc" in doc["dns_names"]
    assert doc["kubectl"].startswith("kubectl -n chat create secret tls wsop-webhook-tls")
    assert (out / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (out / "ca.key").stat().st_mode & 0o777 == 0o600
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "99999999"], "--days must be an integer from 1 to 36,500"),
        (["--days", "0"], "--days must be an integer from 1 to 36,500"),
        (["--service", ""], "invalid --service ''"),
        (["--name", "é.com"], "invalid certificate name (--name) 'é.com'"),
        (["--name", "bad name!"], "invalid certificate name (--name) 'bad name!'"),
        (["--name", "a\x01b.com"], "invalid certificate name (--name)"),
        (["--namespace", "x; touch /tmp/PWN"], "invalid --namespace 'x; touch /tmp/PWN'"),
    ],
)
def test_certs_bad_names_and_days_are_exit_2(tmp_path, args, message):
    """Names checked as RFC 1123 before they reach the certificate builder (its
    OverflowError/ValueError were internal errors) or the printed kubectl command."""
    out = tmp_path / "c"
    result = runner.invoke(app, ["webhook", "certs", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_certs_accept_wildcards_ips_and_mixed_case(tmp_path):
    names = ["--name", "*.example.com", "--name", "10.0.0.1", "--name", "Foo.example"]
    result = runner.invoke(app, ["webhook", "certs", "--out", str(tmp_path), *names, "--json"])
    assert result.exit_code == 0, result.output
    assert "*.example.com" in json.loads(result.stdout)["dns_names"]


def test_manifests_bad_namespace_is_exit_2():
    result = runner.invoke(app, ["manifests", "-n", "x; y"])
    assert result.exit_code == 2 and "invalid --namespace 'x; y'" in result.stderr


# --- manifests --webhook --------------------------------------------------------------


def test_manifests_with_webhook_validate_and_carry_the_ca(certs):
    result = runner.invoke(
        app, ["manifests", "-n", "chat", "--webhook", "--webhook-ca", str(certs / "ca.crt")]
    )
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in docs:
        validate(doc)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "wsop-webhook"),
        ("Service", "wsop-webhook"),
        ("MutatingWebhookConfiguration", "wsop-sidecar-injector-chat"),
    } <= kinds
    (config,) = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    (hook,) = config["webhooks"]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == (certs / "ca.crt").read_bytes()
    assert hook["clientConfig"]["service"] == {
        "name": "wsop-webhook",
        "namespace": "chat",
        "path": "/mutate",
        "port": 443,
    }
    assert hook["sideEffects"] == "None" and hook["failurePolicy"] == "Fail"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["objectSelector"] == {"matchLabels": {"ws.operator/enabled": "true"}}
    assert hook["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "chat"}}
    assert hook["rules"][0]["operations"] == ["CREATE"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and "webhook" in str(d)]
    pod = deployment["spec"]["template"]
    # its own pods are not labelled for injection: failurePolicy Fail cannot lock it out
    assert "ws.operator/enabled" not in pod["metadata"]["labels"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert "--image=localhost/wsop:0.1.0" in container["args"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--webhook"], "--webhook needs --namespace"),
        (["-n", "other", "--webhook", "--webhook-ca", "{ca}"], "not wsop-webhook.other.svc"),
        (["-n", "chat", "--webhook", "--webhook-ca", "{missing}"], "no such file"),
    ],
)
def test_manifests_webhook_misuse_is_exit_2(certs, tmp_path, args, message):
    filled = [
        a.format(ca=certs / "ca.crt", missing=tmp_path / "ca.crt") for a in ["manifests", *args]
    ]
    result = runner.invoke(app, filled)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
