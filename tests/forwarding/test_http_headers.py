"""The identity headers of HTTP mode: XFCC in Envoy's format, nginx-style headers, and what is
sent for an anonymous or unverified client (nothing but ``NONE``/``FAILED``)."""

from __future__ import annotations

import dataclasses
from urllib.parse import unquote

import pytest
from cryptography import x509

from mtlsproxy.config.model import HEADER_FIELDS, XFCC_FIELDS
from mtlsproxy.forwarding import ForwardedTLS
from mtlsproxy.forwarding.http.headers import (
    NGINX_STYLE_HEADERS,
    forwarded_headers,
    identity_field,
    identity_headers,
    xfcc_value,
)
from mtlsproxy.forwarding.http.request import RequestRewriter
from tests.forwarding.support import SPIFFE_ID, Certs, forwarded


def test_xfcc_value_in_envoys_format(certs: Certs) -> None:
    info = forwarded(certs)
    identity = info.identity
    assert identity is not None
    value = xfcc_value(info, by="spiffe://example.org/ns/prod/sa/api")
    assert value == (
        f"By=spiffe://example.org/ns/prod/sa/api;Hash={identity.sha256};"
        f'Subject="CN=frontend";URI={SPIFFE_ID};URI=https://id.example.org/frontend;'
        "DNS=frontend.internal;DNS=fe.internal"
    )
    assert xfcc_value(info, fields=("hash",)) == f"Hash={identity.sha256}"
    with_cert = xfcc_value(info, fields=("cert",))
    assert with_cert is not None and with_cert.startswith('Cert="-----BEGIN%20CERTIFICATE')
    pem = unquote(with_cert[len('Cert="') : -1]).encode()
    assert x509.load_pem_x509_certificate(pem) == certs.client
    with pytest.raises(ValueError):
        xfcc_value(info, fields=("chain",))


def test_xfcc_quoting_and_escaping(certs: Certs) -> None:
    base = forwarded(certs)
    assert base.identity is not None
    identity = dataclasses.replace(
        base.identity,
        subject='CN=a\\,b,O=say "hi"',
        uris=("https://x/?a=1;b=2",),
        dns_names=("ok.example",),
    )
    value = xfcc_value(
        dataclasses.replace(base, identity=identity), fields=("subject", "uri", "dns")
    )
    assert value == 'Subject="CN=a\\\\,b,O=say \\"hi\\"";URI="https://x/?a=1;b=2";DNS=ok.example'
    crlf = dataclasses.replace(identity, subject="CN=x\r\nX-Evil: 1", uris=("spiffe://é",))
    value = xfcc_value(dataclasses.replace(base, identity=crlf), fields=("subject", "uri"))
    assert value == 'Subject="CN=x%0D%0AX-Evil: 1";URI=spiffe://%C3%A9'
    RequestRewriter([("X-Forwarded-Client-Cert", value)])  # a valid header value


def test_no_xfcc_for_anonymous_or_unverified(certs: Certs) -> None:
    assert xfcc_value(forwarded(certs, anonymous=True)) is None
    assert xfcc_value(forwarded(certs, verified=False)) is None
    assert identity_headers(forwarded(certs, anonymous=True)) == []


def test_xfcc_with_no_fields_sends_no_header(certs: Certs) -> None:
    """``xfcc: []`` means no X-Forwarded-Client-Cert at all, not an empty one."""
    info = forwarded(certs)
    assert identity_headers(info, xfcc_fields=()) == []
    assert xfcc_value(info, fields=("by",)) is None  # no URI SAN of ours to name
    assert [name for name, _ in identity_headers(info)] == ["X-Forwarded-Client-Cert"]


def nginx_style(info: ForwardedTLS) -> list[tuple[str, str]]:
    return identity_headers(info, xfcc_fields=None, headers=NGINX_STYLE_HEADERS)


def test_nginx_style_headers(certs: Certs) -> None:
    info = forwarded(certs)
    assert info.identity is not None
    assert nginx_style(info) == [
        ("X-SSL-Client-Verify", "SUCCESS"),
        ("X-SSL-Client-S-DN", "CN=frontend"),
        ("X-SSL-Client-Fingerprint", info.identity.sha256),
        ("X-SSL-Client-SPIFFE-ID", SPIFFE_ID),
    ]
    assert nginx_style(forwarded(certs, anonymous=True)) == [("X-SSL-Client-Verify", "NONE")]
    assert nginx_style(forwarded(certs, verified=False)) == [("X-SSL-Client-Verify", "FAILED")]
    fields = identity_headers(
        info, xfcc_fields=None, headers=[("X-Serial", "serial"), ("X-Dns", "dns"), ("X-Cn", "cn")]
    )
    assert fields == [
        ("X-Serial", info.identity.serial),
        ("X-Dns", "frontend.internal,fe.internal"),
        ("X-Cn", "frontend"),
    ]
    headers = identity_headers(info, headers=NGINX_STYLE_HEADERS, xfcc_fields=("hash",))
    assert [name for name, _ in headers][:2] == ["X-Forwarded-Client-Cert", "X-SSL-Client-Verify"]
    assert identity_headers(info, xfcc_fields=None) == []


def test_every_configurable_field_is_known(certs: Certs) -> None:
    """The configuration's field names (the one definition) are the ones the headers serve."""
    info = forwarded(certs)
    assert xfcc_value(info, fields=XFCC_FIELDS) is not None
    for field in HEADER_FIELDS:
        assert identity_field(info, field) is not None


def test_forwarded_headers_for_ipv4_ipv6_and_unix_peers() -> None:
    fields = ("x-forwarded-for", "x-forwarded-proto", "forwarded")
    assert forwarded_headers(("192.0.2.7", 5555), fields) == [
        ("X-Forwarded-For", "192.0.2.7"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=192.0.2.7;proto=https"),
    ]
    assert forwarded_headers(("2001:db8::1", 5555), ("forwarded",)) == [
        ("Forwarded", 'for="[2001:db8::1]";proto=https')  # RFC 7239 section 6
    ]
    assert forwarded_headers(None, fields) == [
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=unknown;proto=https"),
    ]
    assert forwarded_headers(("192.0.2.7", 1), ()) == []
