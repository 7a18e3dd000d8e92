"""The files a config names, checked before anything listens.

A certificate that does not match its key, or a CRL from the wrong CA, would otherwise surface
as a handshake failure on the first connection (or as every client refused). Each problem is
reported at the line of the key that named the file. The parsed material is thrown away: the
config holds paths, and the engine loads the files itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtlsproxy.config.model import CertificateKeyPair, Config, EngineKind, Listener, Route
from mtlsproxy.config.problems import (
    ConfigProblem,
    Location,
    Locations,
    Role,
    Severity,
    sort_problems,
)
from mtlsproxy.engine.native.tickets import parse_ticket_keys
from mtlsproxy.policy.model import ClientAuth
from mtlsproxy.policy.verify import crl_signature_problem, native_support_problem, parse_crls

T = TypeVar("T")

MAX_FILE_BYTES = 16 * 1024 * 1024
EXPIRY_WARNING = timedelta(days=7)
MIN_RSA_BITS = 2048
_WHAT: dict[Role, str] = {
    "certificate": "PEM certificate",
    "key": "PEM private key",
    "ca": "PEM CA bundle",
    "crl": "CRL",
    "keys": "session ticket key file",
}


def check_files(
    config: Config,
    locations: Locations | None = None,
    *,
    now: datetime | None = None,
) -> list[ConfigProblem]:
    """Problems (errors and warnings) with the files ``config`` names, sorted by line.

    ``locations`` (from the loader) says which key named each file in each role; a file
    missing from it is reported without a line.
    """
    checker = _Checker(config.source, locations or {}, now or datetime.now(UTC))
    for listener, route in _routes(config):
        for pair in route.tls.certificates:
            checker.key_pair(pair)
        checker.client_auth(route.client_auth, listener.engine)
        if route.tls.session_tickets.keys is not None:
            checker.ticket_keys(route.tls.session_tickets.keys)
    return sort_problems(checker.problems)


def _routes(config: Config) -> Iterator[tuple[Listener, Route]]:
    for listener in config.listeners:
        yield listener, listener.default_route
        for route in listener.routes:
            yield listener, route


class _Checker:
    """Loads each file once and reports what is wrong with it where it was named."""

    def __init__(self, source: Path, locations: Locations, now: datetime) -> None:
        self.problems: list[ConfigProblem] = []
        self._source = source
        self._locations = locations
        self._now = now
        self._loaded: dict[tuple[Path, Role], Any] = {}

    def report(self, path: Path, role: Role, message: str, severity: Severity = "error") -> None:
        where = self._locations.get((path, role), Location(None, ""))
        self.problems.append(
            ConfigProblem(self._source, where.line, where.key_path, message, severity)
        )

    def load(self, path: Path, role: Role, parse: Callable[[bytes], T]) -> T | None:
        """``path`` parsed for ``role``, or None when it cannot be (and that is reported)."""
        if (path, role) not in self._loaded:
            self._loaded[path, role] = self._parse(path, role, parse)
        loaded: T | None = self._loaded[path, role]
        return loaded

    def _parse(self, path: Path, role: Role, parse: Callable[[bytes], T]) -> T | None:
        try:
            with path.open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            self.report(path, role, f"cannot read {path}: {e.strerror}")
            return None
        if len(data) > MAX_FILE_BYTES:
            self.report(path, role, f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB")
            return None
        try:
            return parse(data)
        except (ValueError, UnsupportedAlgorithm) as e:
            self.report(path, role, f"{path} is not a valid {_WHAT[role]}: {e}")
            return None

    def key_pair(self, pair: CertificateKeyPair) -> None:
        chain = self.load(pair.certificate, "certificate", _certificates)
        key = self.load(pair.key, "key", _private_key)
        if chain:
            self.validity(pair.certificate, chain[0])
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
            self.report(
                pair.key, "key", f"the RSA key has {key.key_size} bits; use {MIN_RSA_BITS} or more"
            )
        if chain and key and _spki(chain[0].public_key()) != _spki(key.public_key()):
            self.report(
                pair.key, "key", f"the key does not match the certificate {pair.certificate}"
            )
        if chain and not _allows_server_auth(chain[0]):
            subject = chain[0].subject.rfc4514_string() or "(empty subject)"
            self.report(
                pair.certificate,
                "certificate",
                f"the certificate {subject} has an extended key usage without serverAuth: "
                "clients refuse it as a server certificate",
            )

    def validity(self, path: Path, cert: x509.Certificate) -> None:
        subject = cert.subject.rfc4514_string() or "(empty subject)"
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if self._now < start:
            self.report(
                path, "certificate", f"the certificate {subject} is not valid before {_date(start)}"
            )
        elif self._now > end:
            self.report(path, "certificate", f"the certificate {subject} expired on {_date(end)}")
        elif end - self._now < EXPIRY_WARNING:
            days = (end - self._now).days
            message = f"the certificate {subject} expires in {days} days, on {_date(end)}"
            self.report(path, "certificate", message, "warning")

    def ticket_keys(self, path: Path) -> None:
        """Readable, one base64 key of 32 bytes or more per line, at least one (the message
        names a line, never its content)."""
        self.load(path, "keys", _ticket_keys)

    def client_auth(self, auth: ClientAuth, engine: EngineKind) -> None:
        if auth.ca is None:
            return  # mode none: nothing to verify clients with
        cas = self.load(auth.ca, "ca", _certificates)
        unusable = native_support_problem(cas) if cas and engine is EngineKind.NATIVE else None
        if unusable is not None:
            self.report(
                auth.ca,
                "ca",
                f"{unusable}: every client of it would be refused on engine: native "
                "(engine: openssl can use it)",
            )
        for cert in cas or []:
            if not _is_ca(cert):
                subject = cert.subject.rfc4514_string()
                self.report(auth.ca, "ca", f"{subject} in {auth.ca} is not a CA (basicConstraints)")
        crls = self.load(auth.crl, "crl", parse_crls) if auth.crl else None
        if auth.crl is None or not crls or not cas:
            return
        covered = {crl.issuer for crl in crls}
        for ca in cas:
            if _is_ca(ca) and ca.subject not in covered:  # a non-CA is reported above
                self.report(
                    auth.crl,
                    "crl",
                    f"{auth.crl} holds no CRL of {ca.subject.rfc4514_string()} (in {auth.ca}): "
                    "CRL checks fail closed, so every client certificate it issued is refused",
                    "warning",
                )
        for crl in crls:
            problem = crl_signature_problem(crl, cas)
            if problem is not None:
                self.report(auth.crl, "crl", f"{problem} in {auth.ca}")
            update = crl.next_update_utc
            if update is not None and update < self._now:
                issuer = crl.issuer.rfc4514_string()
                message = (
                    f"the CRL of {issuer} is past its next update ({_date(update)}): CRL checks "
                    "fail closed, so every client it covers would be refused"
                )
                self.report(auth.crl, "crl", message)


def _certificates(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError("no PEM CERTIFICATE block")
    return x509.load_pem_x509_certificates(data)


def _ticket_keys(data: bytes) -> int:
    return len(parse_ticket_keys(data))


def _private_key(data: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as e:  # cryptography's way of saying "encrypted, and no password"
        raise ValueError("the key is encrypted; mtlsproxy needs it unencrypted") from e


def _spki(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _allows_server_auth(cert: x509.Certificate) -> bool:
    """RFC 5280 section 4.2.1.12: no extendedKeyUsage allows any usage."""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    except ValueError:  # malformed: cryptography's verifier and clients refuse it too
        return False
    return ExtendedKeyUsageOID.SERVER_AUTH in usages or (
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _date(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"
