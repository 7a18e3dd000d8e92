"""The client-certificate policy as typed data (the policy table of docs/handshake.md)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class ClientAuthMode(enum.StrEnum):
    """Whether the server sends a CertificateRequest and what it does without an answer.

    ``none``: one-way TLS, no CertificateRequest (seed step 2 without the request).
    ``request``: CertificateRequest sent; a client without a certificate is admitted anonymously.
    ``require``: mutual TLS; a client without a certificate fails the handshake (seed step 5).
    """

    NONE = "none"
    REQUEST = "request"
    REQUIRE = "require"


class AllowKind(enum.StrEnum):
    """What part of the verified leaf certificate an allow rule matches."""

    SPIFFE_ID = "spiffe_id"  # a URI SAN with the spiffe scheme; `*` wildcards per path segment
    URI = "uri"  # any URI SAN; same wildcard rule
    DNS = "dns"  # a DNS SAN; a leading `*.` matches exactly one label
    SUBJECT_CN = "subject_cn"  # the subject commonName, exact
    SHA256 = "sha256"  # the SHA-256 fingerprint of the leaf DER, hex with or without colons


@dataclass(frozen=True, slots=True)
class AllowRule:
    kind: AllowKind
    pattern: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.pattern}"


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """The client-certificate policy of one route.

    ``ca`` is required unless ``mode`` is ``none``. An empty ``allow`` admits every verified
    client; otherwise any matching rule admits. ``enforce: false`` is audit mode: a client
    the policy would refuse is admitted, counted and logged as ``would_refuse``, and its
    identity forwarded as unverified (rolling mutual TLS out without an outage).
    """

    mode: ClientAuthMode = ClientAuthMode.NONE
    ca: Path | None = None
    crl: Path | None = None
    allow: tuple[AllowRule, ...] = ()
    enforce: bool = True
