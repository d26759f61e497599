"""A private CA and the webhook's serving certificate (`wsop webhook certs`).

The API server calls admission webhooks over HTTPS only, and trusts the serving
certificate through the `caBundle` of the MutatingWebhookConfiguration: a CA of our
own is all it takes (no cluster CA, no cert-manager needed). The serving certificate
names the webhook Service the way the API server dials it
(`<service>.<namespace>.svc`, plus the shorter and longer forms), and `extra_names`
may add more (tests add `127.0.0.1`).

Keys are ECDSA P-256 (small, fast, accepted by every Kubernetes version). Files, in the
output directory: `ca.crt` (goes into `caBundle`: `wsop manifests --webhook-ca`),
`ca.key` (keep it to issue the next serving certificate), `tls.crt` + `tls.key` (the
Secret `wsop-webhook-tls` the webhook Deployment mounts). Keys are written 0600.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from wsop import tls
from wsop.checks import check_member_name
from wsop.errors import InputError
from wsop.tls import Issued


def service_names(service: str, namespace: str) -> list[str]:
    """Every name the API server (or a pod) may use for the Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def issue(
    directory: Path,
    service: str,
    namespace: str,
    days: int = 365,
    extra_names: tuple[str, ...] = (),
    now: dt.datetime | None = None,
) -> Issued:
    """Write a new CA and a serving certificate for `service.namespace.svc` into `directory`.

    Both are Kubernetes object names, DNS labels (RFC 1123): checked here because they
    become certificate names and are echoed into the `kubectl` command printed next.
    """
    check_member_name(service, "--service")
    check_member_name(namespace, "--namespace")
    names = service_names(service, namespace) + list(extra_names)
    return tls.issue(directory, names, f"webhook {namespace}", days, now)


def read_ca_bundle(path: Path) -> bytes:
    """The PEM CA certificate(s) at `path`, checked to parse (for `caBundle`)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"{path}: no such file (create it with `wsop webhook certs`, or pass --webhook-ca)"
        ) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InputError(f"{path}: not a PEM certificate") from None
    if not certs:
        raise InputError(f"{path}: not a PEM certificate")
    return data


def serving_names(path: Path) -> list[str] | None:
    """The DNS names of the serving certificate at `path`, or None when it is absent."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(sans.get_values_for_type(x509.DNSName))
