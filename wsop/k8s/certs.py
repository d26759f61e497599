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
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wsop.errors import InputError, UsageError

CA_DAYS = 3650


@dataclass(frozen=True)
class Issued:
    directory: Path
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_after: dt.datetime

    def to_json(self) -> dict[str, object]:
        return {
            "directory": str(self.directory),
            "files": {
                name: str(self.directory / name)
                for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")
            },
            "dns_names": list(self.dns_names),
            "ip_addresses": list(self.ip_addresses),
            "not_after": self.not_after.isoformat(),
        }


def service_names(service: str, namespace: str) -> list[str]:
    """Every name the API server (or a pod) may use for the Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wsop"),
            x509.NameAttribute(NameOID.COMMON_NAME, common[:64]),
        ]
    )


def issue(
    directory: Path,
    service: str,
    namespace: str,
    days: int = 365,
    extra_names: tuple[str, ...] = (),
    now: dt.datetime | None = None,
) -> Issued:
    """Write a new CA and a serving certificate for `service.namespace.svc` into `directory`."""
    if days < 1:
        raise UsageError(f"--days must be ≥ 1, got {days}")
    now = now or dt.datetime.now(dt.UTC)
    dns = service_names(service, namespace)
    ips: list[str] = []
    for extra in extra_names:
        try:
            ips.append(str(ipaddress.ip_address(extra)))
        except ValueError:
            dns.append(extra)
    start = now - dt.timedelta(minutes=5)  # tolerate a little clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"wsop webhook CA ({namespace})")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=max(CA_DAYS, days)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    not_after = now + dt.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{service}.{namespace}.svc"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write(directory / "ca.crt", ca.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(directory / "ca.key", _key_pem(ca_key), 0o600)
        _write(directory / "tls.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(directory / "tls.key", _key_pem(key), 0o600)
    except OSError as exc:
        raise InputError(f"{directory}: cannot write the certificates ({exc})") from None
    return Issued(directory, tuple(dns), tuple(ips), not_after)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create with `mode` from the start (a key is never world-readable, even briefly)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


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
