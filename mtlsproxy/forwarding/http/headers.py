"""The identity headers of HTTP mode: what each request tells the upstream about the client.

Computed once per connection from ``ForwardedTLS`` (``identity_headers``) and appended by
``request.RequestRewriter`` to every request head. They cannot be spoofed because the rewriter
first drops every field the client sent under a name this module can inject
(``SANITIZED_HEADERS``), on every connection, whether or not that connection gets the header:
an anonymous client gets no XFCC, so it must not be able to send one either.

Two formats, for the two kinds of upstream that exist: Envoy's ``X-Forwarded-Client-Cert``
(``xfcc_value``, fields from the configuration's ``XFCC_FIELDS``) and nginx-style
single-value headers (``identity_field``, ``X-SSL-Client-Verify`` and friends). Values are made
header-safe here (percent-encoding), since certificate names may hold any character.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mtlsproxy.config.model import DEFAULT_XFCC_FIELDS, XFCC_FIELDS
from mtlsproxy.forwarding.tls_info import Address, ForwardedTLS

XFCC = "X-Forwarded-Client-Cert"
SSL_CLIENT_VERIFY = "X-SSL-Client-Verify"
SSL_CLIENT_S_DN = "X-SSL-Client-S-DN"
SSL_CLIENT_FINGERPRINT = "X-SSL-Client-Fingerprint"
SSL_CLIENT_SPIFFE_ID = "X-SSL-Client-SPIFFE-ID"

SANITIZED_HEADERS: frozenset[str] = frozenset(
    name.lower()
    for name in (
        XFCC,
        SSL_CLIENT_VERIFY,
        SSL_CLIENT_S_DN,
        SSL_CLIENT_FINGERPRINT,
        SSL_CLIENT_SPIFFE_ID,
    )
)
"""Removed from every request by default: every name this module can inject, whether or not
it injects it on this connection."""


def _header_safe(text: str) -> str:
    """Percent-encode what may not appear in a header value (controls, DEL, non-ASCII: RFC 9110
    section 5.5 leaves obs-text to be treated as opaque data, so UTF-8 goes encoded)."""
    return "".join(
        c if " " <= c <= "~" else quote(c, safe="", encoding="utf-8", errors="replace")
        for c in text
    )


def _xfcc_quote(value: str, *, always: bool = False) -> str:
    """Envoy's XFCC rule: a value containing ``,``, ``;`` or ``=`` (or a quote) is
    double-quoted, with ``"`` and ``\\`` escaped by a backslash."""
    value = _header_safe(value)
    if always or any(c in value for c in ',;="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def xfcc_value(
    info: ForwardedTLS, *, fields: Collection[str] = DEFAULT_XFCC_FIELDS, by: str | None = None
) -> str | None:
    """One ``X-Forwarded-Client-Cert`` element in Envoy's format, or ``None`` unless the client
    presented a certificate that was verified (an audit-mode client that would have been
    refused gets none: the upstream must not mistake it for a verified one).

    ``fields`` selects from ``by`` (our own URI SAN, given as ``by``), ``hash`` (SHA-256 of the
    leaf DER, hex), ``subject`` (RFC 4514, always quoted as Envoy does), ``uri`` and ``dns``
    (one pair per SAN), ``cert`` (the URL-encoded PEM, quoted). Keys in Envoy's order. The
    default is Envoy's ``forward_client_cert_details: SANITIZE_SET`` with
    ``set_current_client_cert_details`` of Subject, URI and DNS (Envoy always adds By and Hash).
    """
    unknown = set(fields).difference(XFCC_FIELDS)
    if unknown:
        raise ValueError(f"unknown XFCC fields: {sorted(unknown)}")
    identity = info.identity
    if not info.client_verified or identity is None:
        return None
    pairs = []
    if "by" in fields and by is not None:
        pairs.append("By=" + _xfcc_quote(by))
    if "hash" in fields:
        pairs.append("Hash=" + identity.sha256)
    if "cert" in fields and info.certificate_der is not None:
        pem = x509.load_der_x509_certificate(info.certificate_der).public_bytes(Encoding.PEM)
        pairs.append('Cert="' + quote(pem, safe="") + '"')
    if "subject" in fields:
        pairs.append("Subject=" + _xfcc_quote(identity.subject, always=True))
    if "uri" in fields:
        pairs.extend("URI=" + _xfcc_quote(uri) for uri in identity.uris)
    if "dns" in fields:
        pairs.extend("DNS=" + _xfcc_quote(name) for name in identity.dns_names)
    return ";".join(pairs) or None  # no field to send: no header, not an empty one


# nginx-style headers, as ``proxy_set_header X-SSL-Client-Verify $ssl_client_verify`` ...
NGINX_STYLE_HEADERS: tuple[tuple[str, str], ...] = (
    (SSL_CLIENT_VERIFY, "verify"),
    (SSL_CLIENT_S_DN, "subject"),
    (SSL_CLIENT_FINGERPRINT, "sha256"),
    (SSL_CLIENT_SPIFFE_ID, "spiffe_id"),
)


def identity_field(info: ForwardedTLS, field: str) -> str | None:
    """One identity field for a header (``forward_identity.headers``), ``None`` to omit it.

    ``verify`` is ``SUCCESS``, ``NONE`` (no certificate) or ``FAILED`` (audit mode: presented
    but refused), like nginx's ``$ssl_client_verify``. The others (``subject`` RFC 4514 as
    ``$ssl_client_s_dn``, ``sha256`` lowercase hex where nginx's fingerprint is SHA-1,
    ``spiffe_id``, ``serial``, ``cn``, ``uri`` and ``dns`` comma-separated) are sent for a
    verified client only.
    """
    if field == "verify":
        if not info.client_certificate_presented:
            return "NONE"
        return "SUCCESS" if info.client_verified else "FAILED"
    identity = info.identity
    if not info.client_verified or identity is None:
        return None
    values = {
        "subject": identity.subject,
        "sha256": identity.sha256,
        "spiffe_id": identity.spiffe_id,
        "serial": identity.serial,
        "cn": identity.subject_cn,
        "uri": ",".join(identity.uris) or None,
        "dns": ",".join(identity.dns_names) or None,
    }
    value = values[field]
    return _header_safe(value) if value is not None else None


def forwarded_headers(client: Address, fields: Collection[str]) -> list[tuple[str, str]]:
    """X-Forwarded-For (the client's IP), X-Forwarded-Proto (``https``: the client spoke TLS
    to us) and Forwarded (RFC 7239 section 4: ``for=`` with an IPv6 address bracketed and
    quoted, ``proto=https``), those of ``fields`` (FORWARDED_FIELDS), in that order."""
    host = client[0] if isinstance(client, tuple) else None
    node = host if host is not None else "unknown"  # section 6.3: an unknown or unix peer
    if host is not None and ":" in host:
        node = f'"[{host}]"'
    values = {
        "x-forwarded-for": ("X-Forwarded-For", host),
        "x-forwarded-proto": ("X-Forwarded-Proto", "https"),
        "forwarded": ("Forwarded", f"for={node};proto=https"),
    }
    return [
        (name, value)
        for field, (name, value) in values.items()
        if field in fields and value is not None
    ]


def identity_headers(
    info: ForwardedTLS,
    *,
    xfcc_fields: Collection[str] | None = DEFAULT_XFCC_FIELDS,
    by: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """The ``inject`` list for ``RequestRewriter``: XFCC (unless ``xfcc_fields`` is ``None`` or
    empty, or the client is not verified), then ``headers`` (name -> ``identity_field`` name)."""
    inject = []
    if xfcc_fields:
        value = xfcc_value(info, fields=xfcc_fields, by=by)
        if value is not None:
            inject.append((XFCC, value))
    for name, field in headers:
        value = identity_field(info, field)
        if value is not None:
            inject.append((name, value))
    return inject
