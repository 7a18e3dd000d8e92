"""Client-certificate verification (seed step 6, ``client_verify``).

Path building and the RFC 5280 section 6 checks (signatures, validity, basic constraints, key
usage, name chaining) are done by ``cryptography.x509.verification``, with one relaxation of its
Web PKI profile: the leaf may lack a subjectAltName, because mutual-TLS clients are often named
by their CN only (RFC 5280 section 4.2.1.6 makes the SAN optional when the subject is not
empty). Revocation is ours: CRLs are checked for every certificate of the built path except the
trust anchor.

A failure gets exactly one ``Reason``, chosen deterministically by checking in this order:

1. the leaf is not yet valid (``client_cert_not_yet_valid``) or expired
   (``client_cert_expired``), section 4.1.2.5;
2. the leaf has an extendedKeyUsage without ``clientAuth`` (``client_cert_bad_usage``),
   section 4.2.1.12; no extension means any usage;
3. no path to the CA bundle: no issuer at all is ``client_cert_untrusted``; an intermediate or
   anchor outside its validity is ``client_cert_expired`` (or ``..._not_yet_valid``); a wrong
   signature or a malformed or forbidden certificate is ``client_cert_invalid``;
4. a certificate of the path is listed by a CRL of its issuer (``client_cert_revoked``).

CRL handling (RFC 5280 sections 5 and 6.3): a CRL applies to a certificate when the CRL's issuer
name equals the certificate's issuer name and the CRL's signature verifies with the public key
of the issuer certificate in the built path. A CRL issued by a certificate of the CA bundle must
verify against it when loaded, or loading fails. A CRL issued by an intermediate (which clients
send, so it is not in the bundle) is checked against that intermediate when a path through it is
built. Certificates whose issuer has no CRL are not revocation-checked, and a CRL past its
nextUpdate is still applied (its age is exported as a metric instead of refusing every client).
Delta and indirect CRLs are not supported.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from mtlsproxy.policy.model import ClientAuth
from mtlsproxy.vocabulary.failures import Alert, Reason
from mtlsproxy.vocabulary.identity import PeerIdentity

# Distinct client chains remembered per route: a fleet presents few distinct chains.
VERIFY_CACHE_SIZE = 1024

# The alert "for the cause" (DESIGN.md policy table), as OpenSSL maps X509 verify errors.
_ALERTS = {
    Reason.CLIENT_CERT_UNTRUSTED: Alert.UNKNOWN_CA,
    Reason.CLIENT_CERT_EXPIRED: Alert.CERTIFICATE_EXPIRED,
    Reason.CLIENT_CERT_NOT_YET_VALID: Alert.BAD_CERTIFICATE,
    Reason.CLIENT_CERT_REVOKED: Alert.CERTIFICATE_REVOKED,
    Reason.CLIENT_CERT_BAD_USAGE: Alert.UNSUPPORTED_CERTIFICATE,
}

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


class CertificateRejected(Exception):
    """The client's certificate failed verification; ``detail`` is a human sentence naming the
    subject and the cause (no secrets), ``alert`` the TLS alert that reports it."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.alert = _ALERTS.get(reason, Alert.BAD_CERTIFICATE)


@dataclass(frozen=True, slots=True)
class VerifiedClient:
    """A client whose chain verified: its identity and the built path, leaf to anchor."""

    identity: PeerIdentity
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class LoadedCrl:
    """One CRL of the configured file. ``anchored``: its signature was checked against the CA
    bundle at load; otherwise it is checked against its issuer in each built path."""

    crl: x509.CertificateRevocationList
    source: Path
    issuer: str
    next_update: datetime | None
    anchored: bool


def _describe(cert: x509.Certificate) -> str:
    return PeerIdentity.from_certificate(cert).describe()


class _LazyName:
    """A certificate's description, computed when an error message formats it."""

    __slots__ = ("_cert",)

    def __init__(self, cert: x509.Certificate) -> None:
        self._cert = cert

    def __str__(self) -> str:
        return _describe(self._cert)


class ClientVerifier:
    """Verifies client chains for one route; built once per route and config generation."""

    def __init__(
        self, ca_certificates: Sequence[x509.Certificate], crls: Sequence[LoadedCrl] = ()
    ) -> None:
        if not ca_certificates:
            raise ValueError("the client CA bundle holds no certificate")
        self.ca_certificates: tuple[x509.Certificate, ...] = tuple(ca_certificates)
        # DER subjects, for a CertificateRequest's certificate_authorities (RFC 8446 4.2.4).
        self.ca_names: tuple[bytes, ...] = tuple(
            ca.subject.public_bytes() for ca in ca_certificates
        )
        self.crls: tuple[LoadedCrl, ...] = tuple(crls)
        self._store = Store(list(self.ca_certificates))
        # Leaves may omit the SAN (see the module docstring); all else is the Web PKI profile.
        self._ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
        )
        self._ca_policy = ExtensionPolicy.webpki_defaults_ca()
        self._by_issuer: dict[x509.Name, list[LoadedCrl]] = {}
        for loaded in self.crls:
            self._by_issuer.setdefault(loaded.crl.issuer, []).append(loaded)
        # (id of the CRL, SHA-256 of the issuer DER) -> does the CRL verify with that key.
        self._signature_ok: dict[tuple[int, bytes], bool] = {}
        # Exact chain DER -> (verified, usable until); see verify_der.
        self._cache: OrderedDict[tuple[bytes, ...], tuple[VerifiedClient, datetime]] = OrderedDict()

    @classmethod
    def from_policy(cls, client_auth: ClientAuth) -> ClientVerifier:
        """Load ``client_auth.ca`` and, if set, ``client_auth.crl``.

        ``ValueError`` names the file and the problem: unreadable, no certificate, a CRL that
        does not parse, or a CRL that names a CA of the bundle but is not signed by it.
        """
        if client_auth.ca is None:
            raise ValueError("client_auth.ca is not set")
        cas = _load_ca_bundle(client_auth.ca)
        crls = () if client_auth.crl is None else _load_crls(client_auth.crl, cas)
        return cls(cas, crls)

    def verify(self, chain: Sequence[x509.Certificate], now: datetime) -> VerifiedClient:
        """Verify ``chain`` (leaf first, then the intermediates the client sent) at ``now``.

        Raises ``CertificateRejected`` with the reason chosen in the documented order.
        """
        if not chain:
            raise CertificateRejected(Reason.CLIENT_CERT_MISSING, "the client sent no certificate")
        leaf, intermediates = chain[0], list(chain[1:])
        name = _LazyName(leaf)  # described only if something is refused
        _check_validity(leaf, now, name)
        _check_usage(leaf, name)
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(now)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
            .build_client_verifier()
        )
        try:
            built = tuple(verifier.verify(leaf, intermediates).chain)
        except VerificationError as error:
            raise self._classify(leaf, intermediates, now, name, str(error)) from None
        self._check_revocation(built, name, now)
        return VerifiedClient(PeerIdentity.from_certificate(leaf), built)

    def verify_der(self, chain_der: Sequence[bytes], now: datetime) -> VerifiedClient:
        """``verify`` for a chain as it came off the wire, with the result of an identical
        chain reused: a fleet of clients presents the same few chains thousands of times.

        The cache is keyed by the exact DER bytes and lives in this verifier, which is rebuilt
        whenever the CA bundle or CRL change (reload), so an entry never outlives its trust
        configuration; an entry is used only until the earliest notAfter in its path or the
        earliest nextUpdate of the CRLs that applied, and refusals are never cached. The
        caller still checks the CertificateVerify signature on every handshake.
        """
        key = tuple(chain_der)
        cached = self._cache.get(key)
        if cached is not None and now <= cached[1]:
            self._cache.move_to_end(key)
            return cached[0]
        try:
            chain = [x509.load_der_x509_certificate(der) for der in chain_der]
        except ValueError:
            raise CertificateRejected(
                Reason.CLIENT_CERT_INVALID, "the client's certificate does not parse"
            ) from None
        verified = self.verify(chain, now)
        self._cache[key] = (verified, self._valid_until(verified.chain))
        if len(self._cache) > VERIFY_CACHE_SIZE:
            self._cache.popitem(last=False)
        return verified

    def _valid_until(self, built: tuple[x509.Certificate, ...]) -> datetime:
        ends = [cert.not_valid_after_utc for cert in built]
        ends += [loaded.next_update for loaded in self.crls if loaded.next_update is not None]
        return min(ends)

    def is_revoked(self, cert: x509.Certificate) -> bool:
        """Whether a loaded CRL of ``cert``'s issuer (by name) lists its serial.

        For re-checking a certificate whose chain verified earlier, such as the peer of a
        resumed session after a CRL reload.
        """
        return any(
            loaded.crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
            for loaded in self._by_issuer.get(cert.issuer, ())
        )

    def crls_for(self, cert: x509.Certificate, issuer: x509.Certificate) -> list[LoadedCrl]:
        """The loaded CRLs that apply to ``cert``, issued by ``issuer`` (RFC 5280 section 6.3.3:
        same issuer name, and the CRL's signature verifies with the issuer's key)."""
        key = issuer.fingerprint(hashes.SHA256())
        applicable = []
        for loaded in self._by_issuer.get(cert.issuer, ()):
            cache_key = (id(loaded), key)
            if cache_key not in self._signature_ok:
                self._signature_ok[cache_key] = _crl_signed_by(loaded.crl, issuer)
            if self._signature_ok[cache_key]:
                applicable.append(loaded)
        return applicable

    def _check_revocation(
        self, built: tuple[x509.Certificate, ...], name: object, now: datetime
    ) -> None:
        """With CRLs configured, every certificate of the path but the anchor is checked
        against its issuer's CRL, and one whose issuer has no current CRL (none, or one past
        its next update) is refused: CRL checks fail closed, as OpenSSL's
        ``VERIFY_CRL_CHECK_CHAIN`` does in the handshake (and nginx)."""
        if not self.crls:
            return
        unchecked = None
        for cert, issuer in pairwise(built):
            crls = [
                loaded
                for loaded in self.crls_for(cert, issuer)
                if loaded.next_update is None or loaded.next_update >= now
            ]
            if not crls and unchecked is None:
                unchecked = (cert, issuer)
            for loaded in crls:
                entry = loaded.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
                if entry is not None:
                    whose = "its certificate" if cert is built[0] else _describe(cert)
                    raise CertificateRejected(
                        Reason.CLIENT_CERT_REVOKED,
                        f"{name}: {whose} (serial {cert.serial_number:x}) was revoked on "
                        f"{entry.revocation_date_utc:%Y-%m-%d} by {loaded.source.name}",
                    )
        if unchecked is not None:
            cert, issuer = unchecked
            whose = "its certificate" if cert is built[0] else _describe(cert)
            raise CertificateRejected(
                Reason.CLIENT_CERT_UNTRUSTED,
                f"{name}: no current CRL of {_describe(issuer)} is configured (none, or past "
                f"its next update), so the revocation status of {whose} is unknown "
                "(refused: CRL checks fail closed)",
            )

    def _classify(
        self,
        leaf: x509.Certificate,
        intermediates: list[x509.Certificate],
        now: datetime,
        name: str,
        message: str,
    ) -> CertificateRejected:
        """Map a path-building failure to a reason (step 3 of the module docstring)."""
        if "not valid at validation time" in message:
            for cert in (*intermediates, *self.ca_certificates):
                if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                    expired = now > cert.not_valid_after_utc
                    return CertificateRejected(
                        Reason.CLIENT_CERT_EXPIRED if expired else Reason.CLIENT_CERT_NOT_YET_VALID,
                        f"{name}: the chain's {_describe(cert)} is "
                        f"{'expired' if expired else 'not yet valid'}",
                    )
        known = {c.subject for c in (*intermediates, *self.ca_certificates)}
        if "no interior errors" in message or leaf.issuer not in known:
            return CertificateRejected(
                Reason.CLIENT_CERT_UNTRUSTED,
                f"{name}: no chain to the client CA bundle (issuer {leaf.issuer.rfc4514_string()}"
                f", {len(intermediates)} intermediate(s) sent)",
            )
        if "required EKU not found" in message:
            return CertificateRejected(
                Reason.CLIENT_CERT_BAD_USAGE, f"{name}: a chain certificate forbids clientAuth"
            )
        return CertificateRejected(
            Reason.CLIENT_CERT_INVALID, f"{name}: chain rejected ({_short(message)})"
        )


def _short(message: str) -> str:
    """The verifier's message without the certificate repr it appends."""
    return message.removeprefix("validation failed: ").split(" (encountered")[0]


def _check_validity(leaf: x509.Certificate, now: datetime, name: object) -> None:
    """RFC 5280 section 4.1.2.5: valid from notBefore to notAfter, both inclusive."""
    if now < leaf.not_valid_before_utc:
        raise CertificateRejected(
            Reason.CLIENT_CERT_NOT_YET_VALID,
            f"{name}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
        )
    if now > leaf.not_valid_after_utc:
        raise CertificateRejected(
            Reason.CLIENT_CERT_EXPIRED,
            f"{name}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
        )


def _check_usage(leaf: x509.Certificate, name: object) -> None:
    """RFC 5280 section 4.2.1.12: when extendedKeyUsage is present it must allow clientAuth."""
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    except ValueError as error:
        raise CertificateRejected(
            Reason.CLIENT_CERT_INVALID, f"{name}: malformed extension ({error})"
        ) from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        usages = ", ".join(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku) or "none"
        raise CertificateRejected(
            Reason.CLIENT_CERT_BAD_USAGE,
            f"{name}: extended key usage ({usages}) does not include clientAuth",
        )


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a key type that cannot sign CRLs
        return False


def _load_ca_bundle(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as error:
        raise ValueError(f"{path}: cannot read the client CA bundle: {error.strerror}") from None
    except ValueError:
        raise ValueError(f"{path}: no PEM certificate in the client CA bundle") from None


def parse_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL of a PEM file (any number of blocks) or a DER file (concatenated CRLs)."""
    if b"-----BEGIN" in data:
        crls = [x509.load_pem_x509_crl(block) for block in _PEM_CRL.findall(data)]
    else:
        crls = [x509.load_der_x509_crl(der) for der in _split_der(data)]
    if not crls:
        raise ValueError("holds no CRL")
    return crls


def crl_signature_problem(
    crl: x509.CertificateRevocationList, cas: Sequence[x509.Certificate]
) -> str | None:
    """Why ``crl`` cannot be trusted, or None. A CRL whose issuer is in the CA bundle must be
    signed by it; one from an intermediate (not in the bundle: clients send intermediates) is
    checked against that intermediate in each built path instead (RFC 5280 section 6.3.3)."""
    named = [ca for ca in cas if ca.subject == crl.issuer]
    if named and not any(_crl_signed_by(crl, ca) for ca in named):
        return f"the CRL of {crl.issuer.rfc4514_string()} is not signed by that CA's key"
    return None


def _load_crls(path: Path, cas: Sequence[x509.Certificate]) -> list[LoadedCrl]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the CRL file: {error.strerror}") from None
    try:
        crls = parse_crls(data)
    except ValueError as error:
        raise ValueError(f"{path}: not a valid CRL ({error})") from None
    loaded = []
    for crl in crls:
        problem = crl_signature_problem(crl, cas)
        if problem is not None:
            raise ValueError(f"{path}: {problem} in the CA bundle")
        anchored = any(ca.subject == crl.issuer for ca in cas)
        issuer = crl.issuer.rfc4514_string()
        loaded.append(LoadedCrl(crl, path, issuer, crl.next_update_utc, anchored=anchored))
    return loaded


def _split_der(data: bytes) -> list[bytes]:
    """Split concatenated DER SEQUENCEs by their length headers (X.690 section 8.1.3)."""
    out = []
    while data:
        if len(data) < 2 or data[0] != 0x30:
            raise ValueError("not DER: expected a SEQUENCE")
        length, header = data[1], 2
        if length & 0x80:
            count = length & 0x7F
            if not 0 < count <= 4 or len(data) < 2 + count:
                raise ValueError("not DER: bad length")
            length, header = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
        if len(data) < header + length:
            raise ValueError("not DER: truncated")
        out.append(data[: header + length])
        data = data[header + length :]
    return out
