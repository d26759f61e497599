"""The keys client tokens are checked with: an HS256 secret, a PEM public key, a JWKS file.

Each key verifies exactly one algorithm, decided by the key, never by the token: an RSA
key verifies RS256, a P-256 EC key ES256, the secret HS256. A token's `alg` header only
picks *among the configured keys*, and must then equal that key's algorithm. That is
what defeats `alg: none` and the RS/HS confusion attack (an HS256 token "signed" with
the server's RSA public key as the HMAC secret): the public key is never an HMAC key.

Loading is done once, at start-up: a bad file is a UsageError naming it (exit 2), not
a 401 on every connection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from wsop.errors import InputError, UsageError, WsopError

HS256: Final = "HS256"
RS256: Final = "RS256"
ES256: Final = "ES256"
ALGORITHMS: Final = (HS256, RS256, ES256)
MIN_RSA_BITS: Final = 2048  # NIST SP 800-131A; shorter keys are forgeable in practice


class KeyChoiceError(WsopError):
    """No configured key may verify this token (the caller turns it into a 401)."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One verification key and the one algorithm it verifies; `name` is for messages."""

    alg: str
    key: Any = field(repr=False)
    name: str


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key for minting RS256/ES256 tokens (`wsop token --private-key`)."""

    alg: str
    key: Any = field(repr=False)
    kid: str | None = None


def _alg_of(key: Any, where: str) -> str:
    """RS256 for RSA keys of at least 2048 bits, ES256 for P-256 keys; else UsageError."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise InputError(f"{where}: RSA key of {key.key_size} bits; use at least 2048")
        return RS256
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InputError(f"{where}: EC key on {key.curve.name}; ES256 needs P-256")
        return ES256
    raise InputError(f"{where}: unsupported key type (use an RSA or a P-256 EC key)")


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None


def load_public_key(path: str | Path) -> VerifyKey:
    """A PEM public key (or an X.509 certificate's key) from `path`."""
    data, where = _read(path, "public key file"), f"public key {str(path)!r}"
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            hint = " (that is a private key: give the public one)" if b"PRIVATE" in data else ""
            raise InputError(f"{where}: not a PEM public key or certificate{hint}") from None
    return VerifyKey(_alg_of(key, where), key, where)


def load_private_key(path: str | Path, kid: str | None = None) -> SigningKey:
    """An unencrypted PEM private key from `path`, for minting (tests and dev)."""
    data, where = _read(path, "private key file"), f"private key {str(path)!r}"
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    return SigningKey(_alg_of(key, where), key, kid)


_JWK_ALGS: Final = {"RSA": (RS256, RSAAlgorithm), "EC": (ES256, ECAlgorithm)}


def _jwk(entry: Mapping[str, Any], where: str) -> VerifyKey | str:
    """One JWKS entry as a key, or the reason it cannot verify tokens (it is skipped)."""
    kty, use, alg = entry.get("kty"), entry.get("use"), entry.get("alg")
    if use not in (None, "sig"):
        return f"its use is {use!r}, not 'sig'"
    if kty not in _JWK_ALGS:
        return f"kty {kty!r} is not supported (RSA for RS256, EC P-256 for ES256)"
    expected, algorithm = _JWK_ALGS[kty]
    if alg is not None and alg != expected:
        return f"alg {alg!r} is not supported (a {kty} key verifies {expected} here)"
    if "d" in entry:
        raise InputError(f"{where}: holds a private key; publish only the public part")
    try:
        key = algorithm.from_jwk(dict(entry))
    except (InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{where}: not a valid {kty} key ({exc})") from None
    return VerifyKey(_alg_of(key, where), key, where)


def load_jwks(path: str | Path) -> tuple[dict[str | None, VerifyKey], dict[str, str]]:
    """({kid: key}, {kid: why unusable}) from a JWKS file (RFC 7517 `{"keys": [...]}`).

    Keys that cannot verify tokens here (encryption keys, other algorithms) are skipped
    and remembered, so a token naming one gets a precise 401. A key without `kid` is
    allowed only as the set's single key (stored under None).
    """
    file = f"JWKS {str(path)!r}"
    try:
        doc = json.loads(_read(path, "JWKS file"))
    except ValueError as exc:
        raise InputError(f"{file}: not JSON ({exc})") from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(f'{file}: expected {{"keys": [...]}} with at least one key')
    keys: dict[str | None, VerifyKey] = {}
    unusable: dict[str, str] = {}
    for i, entry in enumerate(entries):
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not (kid is None or isinstance(kid, str)):
            raise InputError(f"{file}: keys[{i}] must be an object with a string 'kid'")
        if kid is None and len(entries) > 1:
            raise InputError(f"{file}: keys[{i}] has no 'kid' (required with several keys)")
        if kid in keys or (kid is not None and kid in unusable):
            raise InputError(f"{file}: kid {kid!r} appears twice")
        found = _jwk(entry, f"{file} key {kid!r}")
        if isinstance(found, str):
            unusable[kid or ""] = found
        else:
            keys[kid] = found
    if not keys:
        raise InputError(f"{file}: no key can verify RS256 or ES256 tokens ({unusable})")
    return keys, unusable


class KeySet:
    """The keys a server accepts tokens from, and the rule that picks one for a token."""

    def __init__(
        self,
        secret: bytes | None = None,
        public_key: VerifyKey | None = None,
        jwks: dict[str | None, VerifyKey] | None = None,
        unusable: dict[str, str] | None = None,
    ) -> None:
        if public_key is not None and jwks is not None:
            raise UsageError("give either --jwt-public-key or --jwks, not both")
        self.secret = VerifyKey(HS256, secret, "WSOP_SECRET") if secret else None
        self.public_key = public_key
        self.jwks = jwks
        self.unusable = unusable or {}

    @classmethod
    def load(
        cls,
        secret: bytes | None,
        public_key_file: str | Path | None = None,
        jwks_file: str | Path | None = None,
    ) -> KeySet:
        if public_key_file is not None and jwks_file is not None:
            raise UsageError("give either --jwt-public-key or --jwks, not both")
        public = load_public_key(public_key_file) if public_key_file is not None else None
        jwks, unusable = load_jwks(jwks_file) if jwks_file is not None else (None, None)
        return cls(secret, public, jwks, unusable)

    def __bool__(self) -> bool:
        return bool(self.secret or self.public_key or self.jwks)

    def accepted(self) -> list[str]:
        asym = {k.alg for k in ([self.public_key] if self.public_key else [])}
        asym |= {k.alg for k in (self.jwks or {}).values()}
        return [alg for alg in ALGORITHMS if alg in asym or (alg == HS256 and self.secret)]

    def select(self, header: Mapping[str, Any]) -> VerifyKey:
        """The key for a token with this (unverified) header, or KeyChoiceError saying why
        none is. The key's algorithm is the only one the signature is then checked with."""
        alg, kid = header.get("alg"), header.get("kid")
        accepted = ", ".join(self.accepted()) or "none"
        if alg not in ALGORITHMS:
            raise KeyChoiceError(
                f"token algorithm {alg!r} is not accepted (this server: {accepted})"
            )
        if alg == HS256:
            if self.secret is None:
                raise KeyChoiceError(f"HS256 tokens are not accepted (this server: {accepted})")
            return self.secret
        key = self._asymmetric(kid)
        if key.alg != alg:
            raise KeyChoiceError(f"token algorithm {alg} does not match {key.name} ({key.alg})")
        return key

    def _asymmetric(self, kid: object) -> VerifyKey:
        if self.jwks is not None:
            if None in self.jwks or (kid is None and len(self.jwks) == 1):
                return next(iter(self.jwks.values()))  # a single key: no kid needed
            if kid is None:
                raise KeyChoiceError("token has no 'kid' header: the JWKS holds several keys")
            if not isinstance(kid, str):
                raise KeyChoiceError("token 'kid' header is not a string")
            if kid in self.unusable:
                raise KeyChoiceError(
                    f"token key id {kid!r} cannot verify tokens: {self.unusable[kid]}"
                )
            if kid not in self.jwks:
                raise KeyChoiceError(f"unknown token key id (kid) {kid!r}")
            return self.jwks[kid]
        if self.public_key is None:
            accepted = ", ".join(self.accepted()) or "none"
            raise KeyChoiceError(
                f"RS256/ES256 tokens are not accepted: no public key configured (this server: "
                f"{accepted})"
            )
        return self.public_key
