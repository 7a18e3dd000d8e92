"""Client-certificate verification (seed step 6, ``client_verify``).

Path building and the RFC 5280 section 6 checks (signatures, validity, basic constraints, key
usage, name chaining, name constraints on SANs) are done by ``cryptography.x509.verification``,
with three relaxations of its Web PKI profile, each matching OpenSSL: the leaf may lack a
subjectAltName, because mutual-TLS clients are often named by their CN only (RFC 5280 section
4.2.1.6 makes the SAN optional when the subject is not empty); a certificate may lack an
authorityKeyIdentifier; and a CA may lack keyUsage (section 4.2.1.3: when it is present it must
assert keyCertSign). The rule the rest of this module keeps is "nothing admitted that OpenSSL
(``openssl verify -purpose sslclient -auth_level 2 -crl_check_all``) would refuse"; the
differential test ``tests/policy/test_differential.py`` holds it to that.

A failure gets exactly one ``Reason``, chosen deterministically by checking in this order:

0. a certificate the client sent that ``cryptography`` cannot parse (a duplicate extension, a
   malformed extension or name, an unknown key algorithm) is ``client_cert_invalid``, never an
   exception: ``verify``, ``verify_der`` and ``verify_resumed`` only raise ``CertificateRejected``;
1. the leaf is not yet valid (``client_cert_not_yet_valid``) or expired
   (``client_cert_expired``), section 4.1.2.5;
2. the leaf's usage (``client_cert_bad_usage``): an extendedKeyUsage without ``clientAuth``
   (section 4.2.1.12; no extension means any usage), a keyUsage without ``digitalSignature``
   (section 4.2.1.3: the key signs the TLS CertificateVerify), a Netscape certificate type
   without "SSL client" (as OpenSSL's ``sslclient`` purpose);
3. no path to the CA bundle: no issuer at all is ``client_cert_untrusted``; an intermediate or
   anchor outside its validity is ``client_cert_expired`` (or ``..._not_yet_valid``); a wrong
   signature or a malformed or forbidden certificate is ``client_cert_invalid``;
4. a key below the floor anywhere in the built path, leaf to anchor (``client_cert_invalid``):
   the floor is OpenSSL's security level 2, rounded up: RSA of at least 2048 bits, elliptic
   curves of at least 256 bits (P-256, P-384, P-521), Ed25519 and Ed448; DSA is refused at any
   size (see the deliberate differences below);
5. names the path's nameConstraints do not reach (``client_cert_invalid``). ``cryptography``
   checks the SANs only, so: a leaf WITHOUT a subjectAltName is refused outright when any CA of
   the path carries nameConstraints (chosen over checking the subject: a constrained CA exists
   to bound what its leaves are called, and a SAN-less leaf is named by its subject, which the
   allow-list matches with ``subject_cn``); a leaf with SANs but no DNS SAN has a host-like CN
   checked against the dNSName constraints (as OpenSSL does); every subject emailAddress below
   a constrained CA is checked against its rfc822Name constraints (as OpenSSL does);
6. a certificate of the path is listed by a CRL of its issuer (``client_cert_revoked``), or,
   with CRLs configured, no current CRL (between its thisUpdate and nextUpdate) covers it
   (``client_cert_untrusted``, fail closed).

CRL handling (RFC 5280 sections 5 and 6.3). A CRL is used for a certificate only when it covers
it: the CRL's issuer name equals the certificate's issuer name; its signature verifies with the
public key of the issuer certificate in the built path; that issuer may sign CRLs (no keyUsage,
or one with cRLSign; OpenSSL refuses the CRL otherwise); the CRL is not past its nextUpdate; and
its IssuingDistributionPoint scope includes the certificate (onlyContainsUserCerts excludes CA
certificates, onlyContainsCACerts excludes leaves, and a distributionPoint name must match one
of the certificate's cRLDistributionPoints, or the CRL covers no certificate that has none, as
section 6.3.3 (b)(2) and OpenSSL's ``crl_crldp_check``; a matching distribution point that
names only some reasons does not cover the certificate fully). With CRLs configured, every
certificate of the path needs a covering CRL, a self-signed trust anchor included (a CRL it
issued must cover it: OpenSSL's ``VERIFY_CRL_CHECK_CHAIN`` checks the root too, so a root CRL
scoped to onlyContainsUserCerts refuses every client there); a CRL that does not cover a
certificate counts as no CRL for it (fail closed).

What is refused where: what can be decided from the CRL file and the CA bundle alone is a
configuration error at load (``ValueError`` naming the file, from ``ClientVerifier.from_policy``,
and reported by ``mtlsproxy check`` through ``crl_signature_problem``): a CRL that does not
parse, a critical extension other than IssuingDistributionPoint and authorityKeyIdentifier
(e.g. a critical CRL number: OpenSSL refuses such a CRL), a critical CRL entry extension, a
delta CRL, an indirect CRL, an onlySomeReasons or onlyContainsAttributeCerts scope (none of
which this verifier can apply, so they could only ever fail every client), and a CRL naming a
CA of the bundle that is not signed by it or whose keyUsage lacks cRLSign. What depends on the
certificate (scope, the key and keyUsage of an intermediate issuer the client sends, freshness)
is applied at verification, failing closed. A CRL past its nextUpdate refuses the certificates
it alone covered, in a full handshake and in a resumption alike.

Resumption (``verify_resumed``): the whole chain is verified again with the current CA bundle,
CRLs and clock. A resumed OpenSSL session yields the leaf alone; a leaf issued by an
intermediate then has no path, so it is checked alone instead: validity, usage, key floor and
revocation against ``now`` (a current CRL of its issuer's name must cover it, its signature
having been checked in the handshake that created the session); the intermediate's own expiry
is bounded by ``valid_until``, which the engines use to bound a session's lifetime.

Deliberate differences from OpenSSL. Stricter (refused here, admitted by OpenSSL; counted by
the differential test):

* the key floor is above security level 2 for P-224 and DSA (level 2 allows 224-bit curves
  and DSA of 2048 bits or more);
* a leaf whose keyUsage has keyAgreement but not digitalSignature (OpenSSL's ``sslclient``
  purpose accepts either; a TLS client signs CertificateVerify);
* a SAN-less leaf under a name-constrained CA (OpenSSL checks its subject instead);
* a leaf with basicConstraints cA true (``cryptography``'s end-entity profile);
* a certificate the client sent that does not parse, even if the path does not use it;
* what ``cryptography`` cannot check: URI, directoryName and other name-constraint forms it
  does not implement, and Ed25519 or Ed448 CA keys (``native_support_problem`` names such a CA
  bundle at load, for ``engine: native``).

One admits more, and depends on configuration only, never on what a client sends: a CA bundle
certificate that is not self-signed (an intermediate trusted without its root) is a trust
anchor here, as with OpenSSL's partial-chain flag; OpenSSL without that flag refuses every
chain that does not end in a self-signed root of the bundle.
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
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import CRLEntryExtensionOID, ExtendedKeyUsageOID, ExtensionOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from mtlsproxy.policy.model import ClientAuth
from mtlsproxy.vocabulary.failures import Alert, Reason
from mtlsproxy.vocabulary.identity import PeerIdentity, load_certificate

# Distinct client chains remembered per route: a fleet presents few distinct chains.
VERIFY_CACHE_SIZE = 1024

# The key floor (step 4): OpenSSL security level 2 (112-bit security), rounded up for curves.
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256

# What cryptography raises for a certificate it cannot parse or use.
_MALFORMED = (
    ValueError,
    TypeError,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)

# The alert "for the cause" (the policy table of docs/handshake.md), as OpenSSL maps X509
# verify errors.
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

# Netscape certificate type (OpenSSL's NS_SSL_CLIENT bit), still honoured by OpenSSL.
_NS_CERT_TYPE = x509.ObjectIdentifier("2.16.840.1.113730.1.1")
_NS_SSL_CLIENT = 0x80

# CRL extensions that may be critical: the scope (applied) and the AKI (harmless).
_CRITICAL_OK = {ExtensionOID.ISSUING_DISTRIBUTION_POINT, ExtensionOID.AUTHORITY_KEY_IDENTIFIER}

# A CN that looks like a host name (checked against dNSName constraints, step 5). Wider than
# OpenSSL's cn2dnsid, so every CN OpenSSL checks is checked here too.
_HOST_LIKE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+\.?")

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
    bundle at load; otherwise it is checked against its issuer in each built path. ``scope``:
    its IssuingDistributionPoint, if any (only the forms ``crl_signature_problem`` accepts)."""

    crl: x509.CertificateRevocationList
    source: Path
    issuer: str
    next_update: datetime | None
    anchored: bool
    scope: x509.IssuingDistributionPoint | None = None


def _describe(cert: x509.Certificate) -> str:
    return PeerIdentity.from_certificate(cert).describe()


class _LazyName:
    """A certificate's description, computed when an error message formats it."""

    __slots__ = ("_cert",)

    def __init__(self, cert: x509.Certificate) -> None:
        self._cert = cert

    def __str__(self) -> str:
        return _describe(self._cert)


def _ca_key_usage(_policy: Policy, cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    """A CA may omit keyUsage (RFC 5280 section 4.2.1.3 "SHOULD"; OpenSSL accepts it); when
    present it must allow certificate signing."""
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("a CA's keyUsage lacks keyCertSign")


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
        # The relaxations of the module docstring; all else is the Web PKI profile.
        aki = (x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
        self._ee_policy = (
            ExtensionPolicy.webpki_defaults_ee()
            .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
            .may_be_present(*aki)
        )
        self._ca_policy = (
            ExtensionPolicy.webpki_defaults_ca()
            .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage)
            .may_be_present(*aki)
        )
        self._by_issuer: dict[x509.Name, list[LoadedCrl]] = {}
        for loaded in self.crls:
            self._by_issuer.setdefault(loaded.crl.issuer, []).append(loaded)
        # (id of the CRL, SHA-256 of the issuer DER) -> may the issuer's key vouch for it.
        self._signature_ok: dict[tuple[int, bytes], bool] = {}
        # Exact chain DER -> (verified, usable until); see verify_der.
        self._cache: OrderedDict[tuple[bytes, ...], tuple[VerifiedClient, datetime]] = OrderedDict()
        # Leaf DER -> its identity, for chains OpenSSL verified; see identity_of.
        self._identities: OrderedDict[bytes, PeerIdentity] = OrderedDict()

    @classmethod
    def from_policy(cls, client_auth: ClientAuth) -> ClientVerifier:
        """Load ``client_auth.ca`` and, if set, ``client_auth.crl``.

        ``ValueError`` names the file and the problem: unreadable, no certificate, a CRL that
        does not parse or cannot be used (see the module docstring: scope forms and critical
        extensions this verifier cannot apply), or a CRL that names a CA of the bundle but is
        not signed by it or comes from a CA whose keyUsage forbids signing CRLs.
        """
        if client_auth.ca is None:
            raise ValueError("client_auth.ca is not set")
        cas = _load_ca_bundle(client_auth.ca)
        crls = () if client_auth.crl is None else _load_crls(client_auth.crl, cas)
        return cls(cas, crls)

    def verify(self, chain: Sequence[x509.Certificate], now: datetime) -> VerifiedClient:
        """Verify ``chain`` (leaf first, then the intermediates the client sent) at ``now``.

        Raises ``CertificateRejected`` with the reason chosen in the documented order, and
        nothing else, whatever the certificates hold.
        """
        if not chain:
            raise CertificateRejected(Reason.CLIENT_CERT_MISSING, "the client sent no certificate")
        try:
            return self._verify(chain[0], list(chain[1:]), now)
        except _MALFORMED as error:
            raise CertificateRejected(
                Reason.CLIENT_CERT_INVALID, f"a certificate of the chain cannot be used ({error})"
            ) from None

    def _verify(
        self, leaf: x509.Certificate, intermediates: list[x509.Certificate], now: datetime
    ) -> VerifiedClient:
        name = _LazyName(leaf)  # described only if something is refused
        for cert in (leaf, *intermediates):
            _check_parses(cert, name)
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
        _check_keys(built, name)
        _check_subject_constraints(built, name)
        self._check_revocation(built, name, now)
        return VerifiedClient(PeerIdentity.from_certificate(leaf), built)

    def verify_der(self, chain_der: Sequence[bytes], now: datetime) -> VerifiedClient:
        """``verify`` for a chain as it came off the wire, with the result of an identical
        chain reused: a fleet of clients presents the same few chains thousands of times.

        The cache is keyed by the exact DER bytes and lives in this verifier, which is rebuilt
        whenever the CA bundle or CRL change (reload), so an entry never outlives its trust
        configuration; an entry is used only until ``valid_until`` of its path, and refusals
        are never cached. The caller still checks the CertificateVerify signature on every
        handshake.
        """
        key = tuple(chain_der)
        cached = self._cache.get(key)
        if cached is not None and now <= cached[1]:
            self._cache.move_to_end(key)
            return cached[0]
        verified = self.verify(_parse_chain(chain_der), now)
        self._cache[key] = (verified, self.valid_until(verified.chain))
        if len(self._cache) > VERIFY_CACHE_SIZE:
            self._cache.popitem(last=False)
        return verified

    def identity_of(self, leaf_der: bytes) -> PeerIdentity | None:
        """The identity in a leaf another verifier (OpenSSL) accepted; None if it does not
        parse. Parsing a certificate's names costs about as much as a fifth of an OpenSSL
        handshake, and it is a pure function of the DER bytes, so each leaf is parsed once
        per verifier (bounded like the chain cache; nothing else is remembered)."""
        identity = self._identities.get(leaf_der)
        if identity is not None:
            self._identities.move_to_end(leaf_der)
            return identity
        try:
            identity = PeerIdentity.from_der(leaf_der)
        except (ValueError, TypeError):
            return None
        self._identities[leaf_der] = identity
        if len(self._identities) > VERIFY_CACHE_SIZE:
            self._identities.popitem(last=False)
        return identity

    def verify_resumed(self, chain_der: Sequence[bytes], now: datetime) -> PeerIdentity:
        """The client of a resumed session, checked again at ``now`` (module docstring,
        "Resumption"): the full chain when the engine has it, else the leaf alone, and a leaf
        whose issuer is not in the bundle (an intermediate the client sent in the original
        handshake) by its own validity, usage, key and revocation."""
        try:
            return self.verify_der(chain_der, now).identity
        except CertificateRejected as rejected:
            if len(chain_der) != 1 or rejected.reason is not Reason.CLIENT_CERT_UNTRUSTED:
                raise
            (leaf,) = _parse_chain(chain_der)
            if any(ca.subject == leaf.issuer for ca in self.ca_certificates):
                raise
        try:
            name = _LazyName(leaf)
            _check_parses(leaf, name)
            _check_validity(leaf, now, name)
            _check_usage(leaf, name)
            _check_keys((leaf,), name)
            self._check_leaf_revocation(leaf, name, now)
            return PeerIdentity.from_certificate(leaf)
        except _MALFORMED as error:
            raise CertificateRejected(
                Reason.CLIENT_CERT_INVALID, f"the certificate cannot be used ({error})"
            ) from None

    def valid_until(self, chain: Sequence[x509.Certificate]) -> datetime:
        """Until when a verification of ``chain`` (a built path, leaf to anchor) stays true
        without new information: the earliest notAfter of the path and nextUpdate of the CRLs.
        A session admitted on it should not be resumed after that moment."""
        ends = [cert.not_valid_after_utc for cert in chain]
        ends += [loaded.next_update for loaded in self.crls if loaded.next_update is not None]
        return min(ends)

    def is_revoked(self, cert: x509.Certificate) -> bool:
        """Whether a loaded CRL of ``cert``'s issuer (by name) that covers it lists its serial.

        For re-checking a certificate whose chain verified earlier, such as the peer of a
        resumed session after a CRL reload.
        """
        return any(
            loaded.crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
            for loaded in self._by_issuer.get(cert.issuer, ())
            if _covers(loaded, cert)
        )

    def crls_for(self, cert: x509.Certificate, issuer: x509.Certificate) -> list[LoadedCrl]:
        """The loaded CRLs that cover ``cert``, issued by ``issuer`` (RFC 5280 section 6.3.3:
        same issuer name, the CRL's signature verifies with the issuer's key, the issuer may
        sign CRLs, and the CRL's scope includes ``cert``); freshness is the caller's."""
        key = issuer.fingerprint(hashes.SHA256())
        applicable = []
        for loaded in self._by_issuer.get(cert.issuer, ()):
            cache_key = (id(loaded), key)
            if cache_key not in self._signature_ok:
                self._signature_ok[cache_key] = _may_sign_crls(issuer) and _crl_signed_by(
                    loaded.crl, issuer
                )
            if self._signature_ok[cache_key] and _covers(loaded, cert):
                applicable.append(loaded)
        return applicable

    def _check_revocation(
        self, built: tuple[x509.Certificate, ...], name: object, now: datetime
    ) -> None:
        """With CRLs configured, every certificate of the path is checked against the CRLs of
        its issuer that cover it (a self-signed anchor against its own), and one that no current
        CRL covers (none, out of scope, or past its next update) is refused: CRL checks fail
        closed, as OpenSSL's ``VERIFY_CRL_CHECK_CHAIN`` does in the handshake (and nginx)."""
        if not self.crls:
            return
        unchecked = None
        pairs = list(pairwise(built))
        anchor = built[-1]
        if anchor.issuer == anchor.subject:  # OpenSSL's CRL_CHECK_ALL checks the root too
            pairs.append((anchor, anchor))
        for cert, issuer in pairs:
            crls = [c for c in self.crls_for(cert, issuer) if _current(c, now)]
            if not crls and unchecked is None:
                unchecked = (cert, _describe(issuer))
            _check_listed(cert, crls, name, cert is built[0])
        if unchecked is not None:
            _refuse_uncovered(unchecked[0], unchecked[1], name, unchecked[0] is built[0])

    def _check_leaf_revocation(self, leaf: x509.Certificate, name: object, now: datetime) -> None:
        """``_check_revocation`` for a leaf without its issuer (a resumed session): the CRLs
        of its issuer's name that cover it; their signatures were checked in the handshake
        that created the session (and anchored ones at load)."""
        if not self.crls:
            return
        crls = [
            loaded
            for loaded in self._by_issuer.get(leaf.issuer, ())
            if _current(loaded, now) and _covers(loaded, leaf)
        ]
        _check_listed(leaf, crls, name, True)
        if not crls:
            _refuse_uncovered(leaf, leaf.issuer.rfc4514_string(), name, True)

    def _classify(
        self,
        leaf: x509.Certificate,
        intermediates: list[x509.Certificate],
        now: datetime,
        name: object,
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


def _parse_chain(chain_der: Sequence[bytes]) -> list[x509.Certificate]:
    try:
        return [load_certificate(der) for der in chain_der]
    except _MALFORMED:
        raise CertificateRejected(
            Reason.CLIENT_CERT_INVALID, "the client's certificate does not parse"
        ) from None


def _current(loaded: LoadedCrl, now: datetime) -> bool:
    """Within thisUpdate..nextUpdate (a CRL "not yet valid" is refused by OpenSSL too)."""
    if loaded.crl.last_update_utc > now:
        return False
    return loaded.next_update is None or loaded.next_update >= now


def _check_listed(
    cert: x509.Certificate, crls: Sequence[LoadedCrl], name: object, is_leaf: bool
) -> None:
    for loaded in crls:
        entry = loaded.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            whose = "its certificate" if is_leaf else _describe(cert)
            raise CertificateRejected(
                Reason.CLIENT_CERT_REVOKED,
                f"{name}: {whose} (serial {cert.serial_number:x}) was revoked on "
                f"{entry.revocation_date_utc:%Y-%m-%d} by {loaded.source.name}",
            )


def _refuse_uncovered(cert: x509.Certificate, issuer: str, name: object, is_leaf: bool) -> None:
    whose = "its certificate" if is_leaf else _describe(cert)
    raise CertificateRejected(
        Reason.CLIENT_CERT_UNTRUSTED,
        f"{name}: no current CRL of {issuer} covering {whose} is configured (none, out of its "
        "scope, or past its next update), so its revocation status is unknown (refused: CRL "
        "checks fail closed)",
    )


def _short(message: str) -> str:
    """The verifier's message without the certificate repr it appends."""
    return message.removeprefix("validation failed: ").split(" (encountered")[0]


def _check_parses(cert: x509.Certificate, name: object) -> None:
    """Step 0: every extension parses, once (cryptography parses them lazily)."""
    try:
        for _ in cert.extensions:
            pass
        cert.subject.rfc4514_string()
        cert.public_key()
    except _MALFORMED as error:
        raise CertificateRejected(
            Reason.CLIENT_CERT_INVALID, f"{name}: a certificate does not parse ({error})"
        ) from None


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


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_usage(leaf: x509.Certificate, name: object) -> None:
    """Step 2: extendedKeyUsage (RFC 5280 section 4.2.1.12), keyUsage (section 4.2.1.3) and
    the Netscape certificate type must all allow a TLS client that signs."""
    eku = _extension(leaf, x509.ExtendedKeyUsage)
    if isinstance(eku, x509.ExtendedKeyUsage) and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        usages = ", ".join(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku) or "none"
        raise CertificateRejected(
            Reason.CLIENT_CERT_BAD_USAGE,
            f"{name}: extended key usage ({usages}) does not include clientAuth",
        )
    usage = _extension(leaf, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.digital_signature:
        raise CertificateRejected(
            Reason.CLIENT_CERT_BAD_USAGE,
            f"{name}: key usage lacks digitalSignature (a TLS client signs with its key)",
        )
    try:
        ns = leaf.extensions.get_extension_for_oid(_NS_CERT_TYPE).value
    except x509.ExtensionNotFound:
        return
    bits = ns.value if isinstance(ns, x509.UnrecognizedExtension) else b""
    # DER BIT STRING: tag, length, unused-bit count, then the bits (X.690 section 8.6).
    if len(bits) < 4 or not bits[3] & _NS_SSL_CLIENT:
        raise CertificateRejected(
            Reason.CLIENT_CERT_BAD_USAGE,
            f"{name}: its Netscape certificate type does not include SSL client",
        )


def key_problem(key: object) -> str | None:
    """Why a certificate's public key is below the floor (module docstring, step 4), or None."""
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        return None if bits >= MIN_RSA_BITS else f"RSA-{bits} (at least {MIN_RSA_BITS} needed)"
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = key.curve
        if curve.key_size >= MIN_EC_BITS:
            return None
        return f"the {curve.name} curve ({curve.key_size} bits; at least {MIN_EC_BITS} needed)"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return None
    if type(key).__name__.startswith("DSA"):  # not dsa.DSAPublicKey: importing dsa warns
        return "DSA (refused at any size)"
    return f"an unsupported key type ({type(key).__name__})"


def _check_keys(built: Sequence[x509.Certificate], name: object) -> None:
    for cert in built:
        problem = key_problem(cert.public_key())
        if problem is not None:
            whose = "its key" if cert is built[0] else f"the key of {_describe(cert)}"
            raise CertificateRejected(
                Reason.CLIENT_CERT_INVALID, f"{name}: {whose} is too weak: {problem}"
            )


def _check_subject_constraints(built: Sequence[x509.Certificate], name: object) -> None:
    """Step 5: what the path's nameConstraints say about names outside the SAN."""
    leaf = built[0]
    san = _extension(leaf, x509.SubjectAlternativeName)
    for depth, ca in enumerate(built[1:], start=1):
        constraints = _extension(ca, x509.NameConstraints)
        if not isinstance(constraints, x509.NameConstraints):
            continue
        if not isinstance(san, x509.SubjectAlternativeName):
            raise CertificateRejected(
                Reason.CLIENT_CERT_INVALID,
                f"{name}: it has no subjectAltName, but {_describe(ca)} carries nameConstraints "
                "(a name-constrained CA vouches only for names it constrains)",
            )
        for cert in built[:depth]:
            for attribute in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
                _check_constrained(str(attribute.value), x509.RFC822Name, constraints, ca, name)
        cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if cn and not san.get_values_for_type(x509.DNSName):
            value = cn[0].value
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            if _HOST_LIKE.fullmatch(text):
                _check_constrained(text, x509.DNSName, constraints, ca, name)


def _check_constrained(
    value: str,
    kind: type[x509.DNSName | x509.RFC822Name],
    constraints: x509.NameConstraints,
    ca: x509.Certificate,
    name: object,
) -> None:
    match = _dns_within if kind is x509.DNSName else _email_within
    permitted = [t.value for t in constraints.permitted_subtrees or () if isinstance(t, kind)]
    excluded = [t.value for t in constraints.excluded_subtrees or () if isinstance(t, kind)]
    outside = permitted and not any(match(value, base) for base in permitted)
    if outside or any(match(value, base) for base in excluded):
        raise CertificateRejected(
            Reason.CLIENT_CERT_INVALID,
            f"{name}: the name {value!r} violates the nameConstraints of {_describe(ca)}",
        )


def _dns_within(dns: str, base: str) -> bool:
    """RFC 5280 section 4.2.1.10 dNSName, as OpenSSL's nc_dns: labels may be added on the left."""
    dns, base = dns.lower().removesuffix("."), base.lower()
    if not base:
        return True
    if len(dns) > len(base):
        return dns.endswith(base) and (base[0] == "." or dns[-len(base) - 1] == ".")
    return dns == base


def _email_within(email: str, base: str) -> bool:
    """RFC 5280 section 4.2.1.10 rfc822Name, as OpenSSL's nc_email."""
    local, at, host = email.rpartition("@")
    if not at:
        return False
    if "@" in base:
        base_local, _, base_host = base.rpartition("@")
        return local == base_local and host.lower() == base_host.lower()
    if base.startswith("."):
        return host.lower().endswith(base.lower())
    return host.lower() == base.lower()


def _may_sign_crls(issuer: x509.Certificate) -> bool:
    """No keyUsage, or one with cRLSign (RFC 5280 section 4.2.1.3; OpenSSL's check_crl)."""
    usage = _extension(issuer, x509.KeyUsage)
    return not isinstance(usage, x509.KeyUsage) or usage.crl_sign


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except _MALFORMED:  # a key type that cannot sign CRLs
        return False


def _covers(loaded: LoadedCrl, cert: x509.Certificate) -> bool:
    """Whether the CRL's scope includes ``cert`` (module docstring; RFC 5280 section 6.3.3 (b)
    and OpenSSL's ``crl_crldp_check``). The issuer name was matched by the caller."""
    scope = loaded.scope
    if scope is not None:
        constraints = _extension(cert, x509.BasicConstraints)
        is_ca = isinstance(constraints, x509.BasicConstraints) and constraints.ca
        if scope.only_contains_user_certs and is_ca:
            return False
        if scope.only_contains_ca_certs and not is_ca:
            return False
    scope_names = _dp_names(scope, loaded.crl.issuer) if scope is not None else None
    points = _extension(cert, x509.CRLDistributionPoints)
    for point in points if isinstance(points, x509.CRLDistributionPoints) else ():
        if point.crl_issuer is not None and not any(
            isinstance(n, x509.DirectoryName) and n.value == loaded.crl.issuer
            for n in point.crl_issuer
        ):
            continue
        names = _dp_names(point, _point_issuer(point, cert))
        if scope_names is None or names is None or set(scope_names) & set(names):
            return point.reasons is None  # the first matching point decides, as OpenSSL
    return scope_names is None


def _point_issuer(point: x509.DistributionPoint, cert: x509.Certificate) -> x509.Name:
    """The name a relative distribution point name extends (RFC 5280 section 4.2.1.13)."""
    for general in point.crl_issuer or ():
        if isinstance(general, x509.DirectoryName):
            return general.value
    return cert.issuer


def _dp_names(
    point: x509.DistributionPoint | x509.IssuingDistributionPoint, issuer: x509.Name
) -> list[x509.GeneralName] | None:
    if point.full_name is not None:
        return list(point.full_name)
    if point.relative_name is not None:
        return [x509.DirectoryName(x509.Name([*issuer.rdns, point.relative_name]))]
    return None


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
    """Why ``crl`` cannot be used, or None: a form this verifier cannot apply (module
    docstring, "What is refused where"), or a CRL whose issuer is in the CA bundle but is not
    signed by it, or signed by a CA whose keyUsage lacks cRLSign. One from an intermediate (not
    in the bundle: clients send intermediates) is checked against that intermediate in each
    built path instead (RFC 5280 section 6.3.3)."""
    who = crl.issuer.rfc4514_string()
    try:
        problem = _crl_form_problem(crl)
    except _MALFORMED as error:
        problem = f"has an extension that does not parse ({error})"
    if problem is not None:
        return f"the CRL of {who} {problem}"
    named = [ca for ca in cas if ca.subject == crl.issuer]
    signers = [ca for ca in named if _crl_signed_by(crl, ca)]
    if named and not signers:
        return f"the CRL of {who} is not signed by that CA's key"
    if signers and not any(_may_sign_crls(ca) for ca in signers):
        return f"the CRL of {who} is signed by a CA whose keyUsage lacks cRLSign"
    return None


def _crl_form_problem(crl: x509.CertificateRevocationList) -> str | None:
    for extension in crl.extensions:
        value = extension.value
        if isinstance(value, x509.DeltaCRLIndicator):
            return "is a delta CRL (only complete CRLs are supported)"
        if isinstance(value, x509.IssuingDistributionPoint):
            if value.indirect_crl:
                return "is an indirect CRL (not supported)"
            if value.only_some_reasons is not None:
                return "covers only some revocation reasons (onlySomeReasons: not supported)"
            if value.only_contains_attribute_certs:
                return "covers attribute certificates only"
        if extension.critical and extension.oid not in _CRITICAL_OK:
            return (
                f"has a critical extension it cannot be checked without "
                f"({extension.oid.dotted_string}; OpenSSL refuses it too)"
            )
    for entry in crl:
        for extension in entry.extensions:
            if extension.critical:
                oid = extension.oid
                what = "certificateIssuer" if oid == CRLEntryExtensionOID.CERTIFICATE_ISSUER else ""
                return (
                    f"has an entry with a critical extension {what or oid.dotted_string} "
                    "(not supported)"
                )
    return None


def _crl_scope(crl: x509.CertificateRevocationList) -> x509.IssuingDistributionPoint | None:
    value = _crl_extension(crl, x509.IssuingDistributionPoint)
    return value if isinstance(value, x509.IssuingDistributionPoint) else None


def _crl_extension(
    crl: x509.CertificateRevocationList, kind: type[x509.ExtensionType]
) -> x509.ExtensionType | None:
    try:
        return crl.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
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
        loaded.append(
            LoadedCrl(crl, path, issuer, crl.next_update_utc, anchored, scope=_crl_scope(crl))
        )
    return loaded


def native_support_problem(ca_certificates: Sequence[x509.Certificate]) -> str | None:
    """Why this client CA bundle cannot be used with ``engine: native``, or None.

    The native engine verifies with ``cryptography``, which refuses every chain through a CA
    whose nameConstraints use a form it does not implement (URI, directoryName, otherName and
    the rest; dNSName, iPAddress and rfc822Name are implemented) and CAs whose key is Ed25519 or
    Ed448 (its Web PKI profile does not allow them); the OpenSSL engine admits those clients.
    A key below the floor (module docstring) fails both engines and is named too. For
    ``mtlsproxy check``: intermediates that clients send cannot be checked here.
    """
    supported = (x509.DNSName, x509.IPAddress, x509.RFC822Name)
    for ca in ca_certificates:
        who = ca.subject.rfc4514_string() or "(empty subject)"
        try:
            key = ca.public_key()
            constraints = _extension(ca, x509.NameConstraints)
        except _MALFORMED as error:
            return f"the CA {who} does not parse ({error})"
        problem = key_problem(key)
        if problem is not None:
            return f"the key of the CA {who} is too weak: {problem}"
        if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            kind = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
            return f"the CA {who} has an {kind} key, which the native engine's verifier refuses"
        if isinstance(constraints, x509.NameConstraints):
            subtrees = [
                *(constraints.permitted_subtrees or ()),
                *(constraints.excluded_subtrees or ()),
            ]
            odd = sorted({type(t).__name__ for t in subtrees if not isinstance(t, supported)})
            if odd:
                return (
                    f"the CA {who} has nameConstraints of a form the native engine's verifier "
                    f"does not implement ({', '.join(odd)}): use engine: openssl"
                )
    return None


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
