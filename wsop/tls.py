"""TLS for wsop's servers: a private CA and serving certificates, and the SSL contexts
the servers listen with and dial with.

A stack's certificates come from the operator (a cert-manager Secret, a corporate CA) or,
for a local stack (`wsop up --tls`) and the admission webhook (`wsop webhook certs`),
from `issue`: a CA of our own and one serving certificate, ECDSA P-256 (small, fast,
accepted everywhere). Servers take `--certfile/--keyfile` and re-read them on SIGHUP
(`reload`: a rotated certificate is picked up without dropping a connection); clients of
wsop's own servers (the LB dialling sidecars, sidecars dialling peers) trust `--ca`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wsop.checks import check_dns_name, check_int_range
from wsop.errors import InputError, UsageError

CA_DAYS = 3650
MAX_DAYS = 36500
"""Longest validity `issue` accepts (100 years): beyond it a date overflows (year 9999)."""


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


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wsop"),
            x509.NameAttribute(NameOID.COMMON_NAME, common[:64]),
        ]
    )


def issue(
    directory: Path,
    names: list[str],
    label: str,
    days: int = 365,
    now: dt.datetime | None = None,
) -> Issued:
    """Write a new CA and a serving certificate for `names` (DNS names or IP addresses)
    into `directory`: ca.crt, ca.key, tls.crt, tls.key (keys 0600). `label` names them."""
    check_int_range(days, "--days", 1, MAX_DAYS)
    now = now or dt.datetime.now(dt.UTC)
    dns: list[str] = []
    ips: list[str] = []
    for extra in names:
        try:
            ips.append(str(ipaddress.ip_address(extra)))
        except ValueError:
            dns.append(check_dns_name(extra, "certificate name (--name)", wildcard=True))
    start = now - dt.timedelta(minutes=5)  # tolerate a little clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"wsop CA ({label})")
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
        .subject_name(_name(dns[0] if dns else ips[0]))
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


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """The context a server listens with; `reload` refreshes it in place."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    reload(context, certfile, keyfile)
    return context


def reload(context: ssl.SSLContext, certfile: str, keyfile: str) -> None:
    """(Re)load the certificate chain: new handshakes use it, open connections keep theirs."""
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot load the certificate {certfile} / {keyfile}: {exc}") from None


def client_context(cafile: str | None) -> ssl.SSLContext:
    """The context wsop dials its own wss:// servers with (the system's CAs, or `cafile`)."""
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot load the CA file {cafile}: {exc}") from None


@dataclass(frozen=True)
class TlsSettings:
    """A server's TLS: the certificate it serves (`certfile` + `keyfile`: both or
    neither), and the CA it trusts when it dials wsop's other servers over wss://
    (`ca_file`; None: the system's CAs). Checked when built: a config that cannot work
    is refused before anything listens."""

    certfile: str | None = None
    keyfile: str | None = None
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise UsageError("give --certfile and --keyfile together")
        if self.serving:
            self.server_context()  # readable, a key that matches the certificate
        if self.ca_file is not None:
            client_context(self.ca_file)

    @property
    def serving(self) -> bool:
        return self.certfile is not None

    def server_context(self) -> ssl.SSLContext | None:
        if self.certfile is None or self.keyfile is None:
            return None
        return server_context(self.certfile, self.keyfile)

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.ca_file)
