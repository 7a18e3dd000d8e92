"""The per-route cache of what every handshake on a route repeats (``native.route_cache``):
one cache per route *object*, never shared with another route, bounded, and holding what the
uncached code would compute."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native import route_cache
from mtlsproxy.engine.native import signatures as sigs
from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.model import ClientAuthMode
from tests.engine.native.harness import build_route


def test_one_cache_per_route_object(pki: PkiFiles) -> None:
    route = build_route(pki)
    cache = route_cache.for_route(route)
    assert route_cache.for_route(route) is cache
    # An equal-looking copy is another route: it gets its own cache.
    copy = dataclasses.replace(route)
    assert route_cache.for_route(copy) is not cache


def test_cache_holds_what_the_messages_encode(pki: PkiFiles) -> None:
    route = build_route(pki, alpn=("h2", "http/1.1"))
    cache = route_cache.for_route(route)
    (credential,) = route.credentials
    assert cache.certificate_messages[id(credential)] == msgs.certificate(credential.chain_der)
    assert cache.certificate_request == msgs.certificate_request(
        sigs.SUPPORTED_SCHEMES, list(route.client_ca_names)
    )
    for alpn in (None, "h2", "http/1.1"):
        assert cache.encrypted_extensions(alpn) == msgs.encrypted_extensions(alpn)
    assert cache.padding.block_size == route.record_padding
    offered = [0x0804, 0x0403]
    assert sigs.choose_usable(cache.credential_schemes, offered) == sigs.choose_credential(
        route.credentials, offered
    )


def test_no_certificate_request_when_the_route_requests_none(pki: PkiFiles) -> None:
    assert route_cache.for_route(build_route(pki, ClientAuthMode.NONE)).certificate_request is None


def test_routes_are_bounded(pki: PkiFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(route_cache, "_CACHES", {})
    monkeypatch.setattr(route_cache, "MAX_ROUTES", 2)
    base = build_route(pki, ClientAuthMode.NONE)
    routes = [dataclasses.replace(base) for _ in range(3)]
    for route in routes:
        route_cache.for_route(route)
    assert len(route_cache._CACHES) == 2
    assert id(routes[0]) not in route_cache._CACHES  # the oldest went first


def test_peer_certificates_parse_once_and_are_bounded(
    pki: PkiFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = route_cache.for_route(build_route(pki))
    der = x509.load_pem_x509_certificate(pki.client_cert.read_bytes()).public_bytes(Encoding.DER)
    first = cache.peer_certificate(der)
    assert cache.peer_certificate(bytes(der)) is first
    assert first == x509.load_der_x509_certificate(der)
    with pytest.raises(ValueError):
        cache.peer_certificate(b"not a certificate")
    monkeypatch.setattr(route_cache, "MAX_PEER_CERTIFICATES", 1)
    other = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    cache.peer_certificate(other.public_bytes(Encoding.DER))
    assert cache.peer_certificate(der) is not first  # dropped, parsed again


def test_choose_remembers_per_scheme_list_and_answers_as_choose_usable(pki: PkiFiles) -> None:
    route = build_route(pki)
    cache = route_cache.for_route(route)
    for offered in ((0x0403,), (0x0804, 0x0403), (0x0807,), ()):
        expected = sigs.choose_usable(cache.credential_schemes, offered)
        assert cache.choose(offered) == expected
        assert cache.choose(offered) == expected  # from the cache
    for n in range(route_cache.MAX_SCHEME_LISTS + 5):
        cache.choose((0x0403, 0x0A0A + n))
    assert len(cache._chosen) <= route_cache.MAX_SCHEME_LISTS
