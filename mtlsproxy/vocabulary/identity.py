"""Who the client is: the names of a verified leaf certificate, extracted once.

The allow-list, the log line, the identity forwarded upstream and ``mtlsproxy check --explain``
all read this one record, so they can never disagree about a client's name. Extraction is
total: a certificate without a SAN extension, without a CN, or with an extension that does not
parse still yields an identity (with the missing parts empty), because a verified but odd
certificate must be refused by the allow-list, not crash the handshake.

The SPIFFE identity follows the X.509-SVID specification (section 2: "exactly one URI SAN, and
by extension, exactly one SPIFFE ID ... Validators encountering an SVID containing more than
one URI SAN MUST reject the SVID"; section 5.2: a leaf's ID has a non-root path) and the
SPIFFE-ID specification (section 2): a certificate has a SPIFFE ID only when exactly one of its
URI SANs has the ``spiffe`` scheme and that one is a valid workload ID. A certificate that fails
this is not refused here (it may still be admitted by a rule on its CN, DNS names or
fingerprint): it is rejected as an SVID, so it has no ``spiffe_id``, and no ``spiffe_id`` rule
(nor ``uri`` rule with the spiffe scheme) matches it. One deliberate leniency: URI SANs of
other schemes (``https://...``) beside the one SPIFFE ID do not take it away, because they
cannot be mistaken for it (rules with the spiffe scheme match ``spiffe_id`` only), and
existing deployments carry such URIs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

# SPIFFE-ID section 2: lowercase scheme; trust domain of lowercase letters, digits, ".", "-" and
# "_"; path segments of letters, digits, ".", "-" and "_" (no percent-encoding, no query,
# fragment, userinfo or port, no empty segment, no trailing "/").
_SPIFFE_ID = re.compile(r"spiffe://([a-z0-9._-]+)((?:/[A-Za-z0-9._-]+)*)")
_SPIFFE_MAX = 2048  # bytes, SPIFFE-ID section 2.3
_TRUST_DOMAIN_MAX = 255  # SPIFFE-ID section 2.1

# What a certificate with a malformed part raises when that part is read.
_MALFORMED = (ValueError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


def is_spiffe_id(uri: str) -> bool:
    """Whether ``uri`` is a valid SPIFFE ID (SPIFFE-ID specification section 2), including a
    trust domain's own ID (``spiffe://example.org``, no path)."""
    match = _SPIFFE_ID.fullmatch(uri)
    if match is None or len(uri.encode()) > _SPIFFE_MAX:
        return False
    if len(match[1]) > _TRUST_DOMAIN_MAX:
        return False
    return not any(segment in (".", "..") for segment in match[2].split("/")[1:])


def svid_spiffe_id(uris: tuple[str, ...]) -> str | None:
    """The SPIFFE ID of a certificate with these URI SANs: its only URI SAN with the spiffe
    scheme (in any case) when that is a valid SPIFFE ID of a workload (a non-root path), else
    None (module docstring)."""
    spiffe = [uri for uri in uris if uri[:7].lower() == "spiffe:"]
    if len(spiffe) != 1 or not is_spiffe_id(spiffe[0]):
        return None
    return spiffe[0] if spiffe[0].count("/") > 2 else None


def load_certificate(der: bytes) -> x509.Certificate:
    """A peer's DER certificate, parsed. ``ValueError`` for bytes that are not one, as
    ``cryptography`` raises it, and for a version other than v1-v3 (RFC 5280 section 4.1.2.1),
    for which it raises its own ``InvalidVersion`` instead: the one place peers' certificates
    are parsed, so a malformed one is the peer's error everywhere, never ours."""
    try:
        return x509.load_der_x509_certificate(der)
    except x509.InvalidVersion:
        raise ValueError("unknown certificate version") from None


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The identity of a client certificate (the leaf).

    ``spiffe_id`` is the SPIFFE ID of an X.509-SVID (see the module docstring: the only URI SAN
    with the spiffe scheme, valid), else None; ``sha256`` is lowercase hex without colons of the
    leaf DER; ``serial`` is lowercase hex. Names are in certificate order.
    """

    subject: str  # RFC 4514, e.g. "CN=frontend,O=Example"
    subject_cn: str | None
    spiffe_id: str | None
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    sha256: str
    serial: str
    not_before: datetime
    not_after: datetime
    issuer: str

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> PeerIdentity:
        """The identity of ``cert``; total: a part that does not parse is left empty."""
        uris, dns_names = _san_names(cert)
        return cls(
            subject=_rfc4514(cert, "subject"),
            subject_cn=_first_cn(cert),
            spiffe_id=svid_spiffe_id(uris),
            uris=uris,
            dns_names=dns_names,
            # hashlib on the DER: a quarter of the cost of cert.fingerprint() (per handshake).
            sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
            serial=format(cert.serial_number, "x"),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            issuer=_rfc4514(cert, "issuer"),
        )

    @classmethod
    def from_der(cls, der: bytes) -> PeerIdentity:
        """Parse DER (as ``SSLObject.getpeercert(binary_form=True)`` returns it).

        Raises ``ValueError`` only when the bytes are not a certificate at all (a version
        other than v1-v3 included).
        """
        return cls.from_certificate(load_certificate(der))

    def describe(self) -> str:
        """A short human name for logs and explanations: the subject, then the SPIFFE ID."""
        name = self.subject or "(empty subject)"
        return f"{name} ({self.spiffe_id})" if self.spiffe_id else name


def _rfc4514(cert: x509.Certificate, which: str) -> str:
    try:
        name: x509.Name = getattr(cert, which)
        return name.rfc4514_string()
    except _MALFORMED:  # an attribute value that is not valid for its type
        return "(unparsable name)"


def _first_cn(cert: x509.Certificate) -> str | None:
    try:
        attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except _MALFORMED:
        return None
    for attribute in attributes:
        value = attribute.value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _san_names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """URI and DNS SANs (RFC 5280 section 4.2.1.6); empty when absent or malformed."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, *_MALFORMED):
        return (), ()
    uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    return uris, tuple(san.get_values_for_type(x509.DNSName))
