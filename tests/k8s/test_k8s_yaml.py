"""`wsop manifests` and `wsop inject`: output validated offline against the Kubernetes
schemas (strict: unknown fields fail), idempotency, and preservation of everything else."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from wsop.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "k8s"
K8S_VERSION = "1.37.0"
runner = CliRunner()


def wsop(*args: str, stdin: str | None = None):
    return runner.invoke(app, list(args), input=stdin)


def validate_all(text: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    return docs


def by_kind(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def sidecar_of(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (sidecar,) = [c for c in containers if c["name"] == "wsop-sidecar"]
    return sidecar


# --- manifests ----------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--with-locust-workers"], ["-n", "chat"]])
def test_manifests_are_valid_kubernetes_objects(extra):
    result = wsop("manifests", *extra)
    assert result.exit_code == 0, result.output
    docs = by_kind(validate_all(result.stdout))
    expected = {
        ("ServiceAccount", "wsop"),
        ("Role", "wsop"),
        ("RoleBinding", "wsop"),
        ("ConfigMap", "wsop-config"),
        ("Service", "wsop-sidecars"),
        ("Deployment", "wsop-lb"),
        ("Service", "wsop-lb"),
        ("ServiceAccount", "wsop-rebalancer"),
        ("Role", "wsop-rebalancer"),
        ("RoleBinding", "wsop-rebalancer"),
        ("Deployment", "wsop-rebalancer"),
    }
    if "--with-locust-workers" in extra:
        expected.add(("Deployment", "wsop-locust-worker"))
    assert set(docs) == expected
    if "-n" in extra:
        assert {d["metadata"]["namespace"] for d in docs.values()} == {"chat"}
        assert docs[("RoleBinding", "wsop")]["subjects"][0]["namespace"] == "chat"


def test_rbac_grants_only_what_discovery_and_the_rebalancer_use():
    docs = by_kind(validate_all(wsop("manifests").stdout))
    rules = {
        (group, resource): sorted(rule["verbs"])
        for rule in docs[("Role", "wsop")]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert rules == {
        ("", "pods"): ["list", "watch"],
        ("discovery.k8s.io", "endpointslices"): ["list", "watch"],
        ("", "pods/proxy"): ["get"],
    }
    binding = docs[("RoleBinding", "wsop")]
    assert binding["roleRef"]["name"] == "wsop" and binding["subjects"][0]["name"] == "wsop"


def test_the_rebalancer_watches_with_a_lease_and_its_own_narrow_role():
    docs = by_kind(validate_all(wsop("manifests", "-n", "chat").stdout))
    rules = docs[("Role", "wsop-rebalancer")]["rules"]
    granted = {
        (group, resource, tuple(rule.get("resourceNames", ()))): sorted(rule["verbs"])
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == {
        ("", "pods", ()): ["list", "watch"],
        ("discovery.k8s.io", "endpointslices", ()): ["list", "watch"],
        ("", "pods/proxy", ()): ["get"],
        ("coordination.k8s.io", "leases", ()): ["create"],
        ("coordination.k8s.io", "leases", ("wsop-rebalancer",)): ["get", "update"],
    }
    deployment = docs[("Deployment", "wsop-rebalancer")]
    assert deployment["spec"]["replicas"] == 2  # one leads, one waits to take over
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "wsop-rebalancer"
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["rebalance", "--watch"]
    for flag in ("--lease=wsop-rebalancer", "--identity=$(POD_NAME)", "--metrics-port=9102"):
        assert flag in args
    assert container["livenessProbe"]["httpGet"]["port"] == "metrics"
    env = {e["name"]: e.get("valueFrom", {}) for e in container["env"]}
    assert env["WSOP_ADMIN_TOKEN"]["secretKeyRef"] == {"name": "wsop", "key": "admin-token"}
    assert container["image"] == "localhost/wsop:0.1.0"  # the tag `make image` builds
    without = by_kind(validate_all(wsop("manifests", "--no-rebalancer").stdout))
    assert not any("rebalancer" in name for _, name in without)


def test_every_server_gets_the_admin_token_from_the_secret():
    """The LB and the sidecars refuse to start without WSOP_ADMIN_TOKEN."""
    docs = by_kind(validate_all(wsop("manifests").stdout))
    injected = validate_all(wsop("inject", str(EXAMPLES / "app.yaml")).stdout)
    containers = [docs[("Deployment", "wsop-lb")]["spec"]["template"]["spec"]["containers"][0]]
    containers += [
        sidecar_of(d)
        for d in injected
        if d["kind"] == "Deployment" and d["metadata"]["labels"].get("ws.operator/enabled")
    ]
    assert len(containers) >= 2
    for container in containers:
        env = {e["name"]: e.get("valueFrom", {}) for e in container["env"]}
        ref = env["WSOP_ADMIN_TOKEN"]["secretKeyRef"]
        assert ref == {"name": "wsop", "key": "admin-token"}, container["name"]
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_headless_service_selects_the_injected_pods_on_the_sidecar_port():
    docs = by_kind(validate_all(wsop("manifests", "--port", "9300").stdout))
    svc = docs[("Service", "wsop-sidecars")]["spec"]
    assert svc["clusterIP"] == "None"
    assert svc["selector"] == {"ws.operator/enabled": "true"}
    assert svc["ports"][0]["port"] == 9300
    config = docs[("ConfigMap", "wsop-config")]["data"]
    assert config["sidecar-port"] == "9300" and config["selector"] == "ws.operator/enabled=true"


def test_manifests_json_is_one_list_document():
    result = wsop("manifests", "--image", "registry.local/wsop:dev", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["kind"] == "List"
    validate_all(yaml.safe_dump_all(doc["items"]))
    lb = by_kind(doc["items"])[("Deployment", "wsop-lb")]
    assert lb["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/wsop:dev"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--port", "0"], "--port"), (["--algo", "bounded"], "--algo"), (["--image", " "], "--image")],
)
def test_manifests_bad_flags_exit_2(args, message):
    result = wsop("manifests", *args)
    assert result.exit_code == 2
    assert message in result.output


# --- inject -------------------------------------------------------------------------

APP = (EXAMPLES / "app.yaml").read_text()


def test_inject_adds_a_valid_sidecar_to_enabled_deployments_only():
    result = wsop("inject", str(EXAMPLES / "app.yaml"))
    assert result.exit_code == 0, result.output
    docs = by_kind(validate_all(result.stdout))
    original = by_kind([d for d in yaml.safe_load_all(APP) if d])
    assert docs.keys() == original.keys()
    assert docs[("Service", "chat-app")] == original[("Service", "chat-app")]
    assert docs[("Deployment", "chat-worker")] == original[("Deployment", "chat-worker")]

    app_deploy = docs[("Deployment", "chat-app")]
    pod = app_deploy["spec"]["template"]
    assert pod["metadata"]["labels"]["ws.operator/enabled"] == "true"
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "chat-app"
    assert pod["spec"]["serviceAccountName"] == "wsop"
    before = original[("Deployment", "chat-app")]["spec"]["template"]["spec"]["containers"]
    assert pod["spec"]["containers"][0] == before[0]  # the app container is untouched
    assert app_deploy["spec"]["replicas"] == 3

    sidecar = sidecar_of(app_deploy)
    assert sidecar["ports"] == [{"name": "wsop", "containerPort": 9100, "protocol": "TCP"}]
    secret_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in sidecar["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert set(secret_env) == {"WSOP_REDIS_URL", "WSOP_SECRET", "WSOP_ADMIN_TOKEN"}
    assert {ref["name"] for ref in secret_env.values()} == {"wsop"}
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["resources"]["requests"] and sidecar["resources"]["limits"]
    assert "--name=$(POD_NAME)" in sidecar["args"]
    # before SIGTERM the pod's clients are moved live to other sidecars
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"] == [
        "wsop", "drain", "--url=http://127.0.0.1:9100", "--wait=20"
    ]  # fmt: skip
    assert "injected wsop-sidecar into Deployment chat-app" in result.stderr


def test_inject_is_idempotent_and_reports_no_change():
    first = wsop("inject", "-", stdin=APP)
    second = wsop("inject", "-", stdin=first.stdout)
    assert first.exit_code == second.exit_code == 0
    assert second.stdout == first.stdout
    assert "already up to date" in second.stderr


def test_inject_replaces_an_older_sidecar_instead_of_adding_a_second():
    old = wsop("inject", "-", "--image", "wsop:old", stdin=APP).stdout
    new = wsop("inject", "-", "--image", "wsop:new", stdin=old)
    assert new.exit_code == 0, new.output
    deploy = by_kind(validate_all(new.stdout))[("Deployment", "chat-app")]
    names = [c["name"] for c in deploy["spec"]["template"]["spec"]["containers"]]
    assert names == ["app", "wsop-sidecar"]
    assert sidecar_of(deploy)["image"] == "wsop:new"


def test_inject_keeps_an_existing_service_account_and_says_so():
    text = APP.replace(
        "    spec:\n      containers:\n        - name: app",
        ("    spec:\n      serviceAccountName: chat\n      containers:\n        - name: app"),
    )
    result = wsop("inject", "-", stdin=text)
    assert result.exit_code == 0, result.output
    deploy = by_kind(validate_all(result.stdout))[("Deployment", "chat-app")]
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "chat"
    assert "bind Role 'wsop'" in result.stderr


def test_inject_refuses_a_port_the_app_already_uses():
    result = wsop("inject", "-", "--port", "8080", stdin=APP)
    assert result.exit_code == 2
    assert "already uses port 8080" in result.stderr and "chat-app" in result.stderr


def test_inject_with_nothing_enabled_passes_everything_through():
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: '1'}\n"
    result = wsop("inject", "-", stdin=text)
    assert result.exit_code == 0
    assert list(yaml.safe_load_all(result.stdout)) == [yaml.safe_load(text)]
    assert "nothing injected" in result.stderr


def test_malformed_yaml_exits_2_with_the_parser_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n  x: 1\n")
    result = wsop("inject", str(bad))
    assert result.exit_code == 2
    assert str(bad) in result.stderr and "line 5" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


ENABLED_META = '{name: d, labels: {ws.operator/enabled: "true"}}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: Deployment\nmetadata: 3\n",
            "document 1 (a Deployment): metadata must be a mapping",
        ),
        ("kind: Deployment\nmetadata: {labels: 7}\n", "labels must be a mapping, got int"),
        (
            f"kind: Deployment\nmetadata: {ENABLED_META}\n"
            "spec: {template: {spec: {containers: [{name: a, ports: 5}]}}}\n",
            "Deployment d: container 'a': ports must be a list, got int",
        ),
        (
            f"kind: Deployment\nmetadata: {ENABLED_META}\n"
            "spec: {template: {spec: {containers: [{name: a, volumeMounts: 5}]}}}\n",
            "container 'a': volumeMounts must be a list, got int",
        ),
        ("a: &a [*a]\n", "document 1: a YAML alias refers to its own anchor"),
        ("x: 1\n---\nb: &b {c: *b}\n", "document 2: a YAML alias refers to its own anchor"),
    ],
)
def test_malformed_objects_exit_2_naming_the_field(tmp_path, text, message):
    """Wrong shapes and self-referencing anchors were AttributeError, TypeError and
    RecursionError internal errors."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = wsop("inject", str(bad))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_a_shared_anchor_is_not_a_cycle(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("a: &a [1]\nb: *a\nc: *a\n")
    assert wsop("inject", str(ok)).exit_code == 0


def test_missing_file_exits_2(tmp_path):
    result = wsop("inject", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "no such file" in result.stderr


def test_the_rendered_examples_are_current():
    """examples/k8s is what the commands render today (comments aside)."""
    manifests = wsop("manifests", "--namespace", "wsop").stdout
    injected = wsop("inject", str(EXAMPLES / "app.yaml")).stdout
    for name, text in (("wsop.yaml", manifests), ("app-injected.yaml", injected)):
        on_disk = (EXAMPLES / name).read_text()
        assert validate_all(on_disk) == validate_all(text), f"regenerate examples/k8s/{name}"


def test_an_lb_tls_secret_makes_the_lb_serve_wss():
    result = wsop("manifests", "-n", "chat", "--lb-tls-secret", "wsop-lb-tls")
    assert result.exit_code == 0, result.output
    docs = by_kind(validate_all(result.stdout))
    pod = docs[("Deployment", "wsop-lb")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--certfile=/etc/wsop/tls/tls.crt" in container["args"]
    assert "--keyfile=/etc/wsop/tls/tls.key" in container["args"]
    assert container["volumeMounts"] == [
        {"name": "tls", "mountPath": "/etc/wsop/tls", "readOnly": True}
    ]
    assert pod["volumes"] == [{"name": "tls", "secret": {"secretName": "wsop-lb-tls"}}]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert docs[("Service", "wsop-lb")]["spec"]["ports"][0]["port"] == 443
