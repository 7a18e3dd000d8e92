"""SPIFFE identities (X.509-SVID and SPIFFE-ID specifications) and spiffe_id rules."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography import x509

from mtlsproxy.policy.authorize import AllowList, compile_rule, match_allow
from mtlsproxy.policy.model import AllowKind, AllowRule
from mtlsproxy.vocabulary.identity import PeerIdentity, is_spiffe_id, svid_spiffe_id

from .minting import cert, key

S, U = AllowKind.SPIFFE_ID, AllowKind.URI
ROOT_KEY = key("ec256", 0)
ROOT = cert("root", ROOT_KEY, ca=True)


def identity_of(*uris: str) -> PeerIdentity:
    sans = [x509.UniformResourceIdentifier(u) for u in uris]
    return PeerIdentity.from_certificate(cert("svc", key("ec256", 2), ROOT, ROOT_KEY, sans=sans))


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://example.org/ns/prod/sa/web",
        "spiffe://example.org/a.b-c_d/E",
        "spiffe://a-b_c.0/x",
        "spiffe://example.org",  # a trust domain's own ID (not a leaf's: see below)
    ],
)
def test_valid_spiffe_ids(uri: str) -> None:
    assert is_spiffe_id(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "SPIFFE://example.org/x",  # scheme in lowercase
        "spiffe://Example.org/x",  # trust domain in lowercase
        "spiffe://example.org:8443/x",  # no port
        "spiffe://user@example.org/x",  # no userinfo
        "spiffe://example.org/x?q=1",
        "spiffe://example.org/x#f",
        "spiffe://example.org/a%2Fb",  # no percent-encoding
        "spiffe://example.org/a//b",  # no empty segment
        "spiffe://example.org/a/",  # no trailing slash
        "spiffe://example.org/a/./b",
        "spiffe://example.org/a/../b",
        "spiffe:///x",
        "spiffe://example.org/" + "a" * 2048,
    ],
)
def test_invalid_spiffe_ids(uri: str) -> None:
    assert not is_spiffe_id(uri)
    assert identity_of(uri).spiffe_id is None


def test_non_ascii_is_not_a_spiffe_id() -> None:
    assert not is_spiffe_id("spiffe://example.org/é")


def test_exactly_one_spiffe_uri_san_with_a_workload_path() -> None:
    web = "spiffe://example.org/ns/prod/sa/web"
    assert identity_of(web).spiffe_id == web
    assert identity_of(web, "spiffe://example.org/ns/prod/sa/admin").spiffe_id is None
    assert identity_of(web, "SPIFFE://example.org/ns/prod/sa/admin").spiffe_id is None
    assert identity_of(web, "https://example.org/").spiffe_id == web  # the deliberate leniency
    assert identity_of("spiffe://example.org").spiffe_id is None  # X.509-SVID 3.1: non-root path
    assert svid_spiffe_id(()) is None


def test_a_rule_never_matches_a_second_spiffe_uri() -> None:
    """The forwarded identity and the matched identity are one and the same."""
    who = identity_of("spiffe://partner.org/x", "spiffe://example.org/ns/prod/sa/admin")
    for kind in (S, U):
        rule = AllowRule(kind, "spiffe://example.org/ns/prod/sa/admin")
        assert match_allow(who, [rule]) is None


def test_a_wildcard_never_matches_an_empty_segment() -> None:
    forged = "spiffe://example.org/ns//sa/web"
    who = dataclasses.replace(identity_of("spiffe://x.org/y"), spiffe_id=forged, uris=(forged,))
    assert match_allow(who, [AllowRule(S, "spiffe://example.org/ns/*/sa/web")]) is None
    https = dataclasses.replace(who, spiffe_id=None, uris=("https://example.org/ns//sa/web",))
    assert match_allow(https, [AllowRule(U, "https://example.org/ns/*/sa/web")]) is None
    ok = dataclasses.replace(https, uris=("https://example.org/ns/p/sa/web",))
    assert match_allow(ok, [AllowRule(U, "https://example.org/ns/*/sa/web")]) is not None


@pytest.mark.parametrize(
    "pattern",
    [
        "SPIFFE://example.org/x",
        "spiffe://Example.org/x",
        "spiffe://*.example.org/x",
        "spiffe://example.org:443/x",
        "spiffe://example.org/a%20b",
        "spiffe://example.org/a//b",
        "spiffe://example.org/a/",
        "spiffe://example.org/./a",
        "spiffe://example.org/../a",
        "spiffe://example.org/a?x",
        "spiffe://example.org/**/x",
    ],
)
def test_invalid_spiffe_patterns_fail_at_compile(pattern: str) -> None:
    for kind in (S, U) if pattern.startswith("spiffe") else (S,):
        with pytest.raises(ValueError, match="'"):
            compile_rule(AllowRule(kind, pattern))


@pytest.mark.parametrize(
    "pattern",
    ["spiffe://example.org/**", "spiffe://example.org/ns/*/sa/w*", "spiffe://example.org/a.b_c-d"],
)
def test_valid_spiffe_patterns_compile(pattern: str) -> None:
    assert AllowList([AllowRule(S, pattern)])
