"""Who the client is: the names of a verified leaf certificate, extracted once.

The allow-list, the log line, the identity forwarded upstream and ``mtlsproxy check --explain``
all read this one record, so they can never disagree about a client's name. Extraction is
total: a certificate without a SAN extension, without a CN, or with an extension that does not
parse still yields an identity (with the missing parts empty), because a verified but odd
certificate must be refused by the allow-list, not crash the handshake.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The identity of a client certificate (the leaf).

    ``spiffe_id`` is the first URI SAN with the ``spiffe`` scheme (a SPIFFE SVID carries exactly
    one, SPIFFE X.509-SVID section 2); ``sha256`` is lowercase hex without colons of the leaf
    DER; ``serial`` is lowercase hex. Names are in certificate order.
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
        uris, dns_names = _san_names(cert)
        spiffe = next((u for u in uris if u.lower().startswith("spiffe://")), None)
        return cls(
            subject=_rfc4514(cert.subject),
            subject_cn=_first_cn(cert.subject),
            spiffe_id=spiffe,
            uris=uris,
            dns_names=dns_names,
            # hashlib on the DER: a quarter of the cost of cert.fingerprint() (per handshake).
            sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
            serial=format(cert.serial_number, "x"),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            issuer=_rfc4514(cert.issuer),
        )

    @classmethod
    def from_der(cls, der: bytes) -> PeerIdentity:
        """Parse DER (as ``SSLObject.getpeercert(binary_form=True)`` returns it).

        Raises ``ValueError`` only when the bytes are not a certificate at all.
        """
        return cls.from_certificate(x509.load_der_x509_certificate(der))

    def describe(self) -> str:
        """A short human name for logs and explanations: the subject, then the SPIFFE ID."""
        name = self.subject or "(empty subject)"
        return f"{name} ({self.spiffe_id})" if self.spiffe_id else name


def _rfc4514(name: x509.Name) -> str:
    try:
        return name.rfc4514_string()
    except ValueError:  # an attribute value that is not valid for its type
        return "(unparsable name)"


def _first_cn(name: x509.Name) -> str | None:
    for attribute in name.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _san_names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """URI and DNS SANs (RFC 5280 section 4.2.1.6); empty when absent or malformed."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return (), ()
    uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    return uris, tuple(san.get_values_for_type(x509.DNSName))
