"""The allow-list semantics table (authorize.py docstring) and the identity it matches."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from mtlsproxy.pki import PkiFiles, issue_leaf, make_ca, new_key
from mtlsproxy.policy.authorize import AllowList, match_allow
from mtlsproxy.policy.model import AllowKind, AllowRule
from mtlsproxy.vocabulary.identity import PeerIdentity, load_certificate, svid_spiffe_id

SHA = "4f2a" + "0" * 60
FRONTEND = "spiffe://example.org/ns/prod/sa/frontend"


def identity(
    *, cn: str | None = "frontend", uris: tuple[str, ...] = (), dns: tuple[str, ...] = ()
) -> PeerIdentity:
    spiffe = svid_spiffe_id(uris)
    when = datetime(2030, 1, 1, tzinfo=UTC)
    return PeerIdentity(
        subject=f"CN={cn}" if cn else "",
        subject_cn=cn,
        spiffe_id=spiffe,
        uris=uris,
        dns_names=dns,
        sha256=SHA,
        serial="1",
        not_before=when,
        not_after=when,
        issuer="CN=ca",
    )


S, U, D, C, H = (
    AllowKind.SPIFFE_ID,
    AllowKind.URI,
    AllowKind.DNS,
    AllowKind.SUBJECT_CN,
    AllowKind.SHA256,
)

CASES = [
    # kind, pattern, identity, admitted
    (S, FRONTEND, identity(uris=(FRONTEND,)), True),
    (S, FRONTEND, identity(uris=(FRONTEND + "x",)), False),
    (S, "spiffe://example.org/ns/prod/*/frontend", identity(uris=(FRONTEND,)), True),
    (S, "spiffe://example.org/ns/*/sa/frontend", identity(uris=(FRONTEND,)), True),
    (S, "spiffe://example.org/ns/*/frontend", identity(uris=(FRONTEND,)), False),  # not across /
    (S, "spiffe://example.org/ns/prod/sa/front*", identity(uris=(FRONTEND,)), True),
    (S, "spiffe://example.org/*", identity(uris=(FRONTEND,)), False),
    (S, "spiffe://example.org/**", identity(uris=(FRONTEND,)), True),
    (S, "spiffe://example.org/ns/prod/**", identity(uris=(FRONTEND,)), True),
    (S, "spiffe://example.org/ns/prod/**", identity(uris=("spiffe://example.org/ns/prod",)), False),
    (S, "spiffe://example.org/ns/dev/**", identity(uris=(FRONTEND,)), False),
    (S, "spiffe://example.org/ns/prod/sa/frontend", identity(uris=("x", FRONTEND)), True),
    # Two spiffe URI SANs: not an X.509-SVID (section 5.2), so no SPIFFE ID to match.
    (S, FRONTEND, identity(uris=("spiffe://example.org/a", FRONTEND)), False),
    (S, "spiffe://example.org/**", identity(uris=("https://example.org/ns",)), False),
    (U, "https://example.org/ns/*", identity(uris=("https://example.org/ns/a",)), True),
    (U, "https://example.org/ns/*", identity(uris=("https://example.org/ns/a/b",)), False),
    (U, "https://example.org/**", identity(uris=("https://example.org/ns/a/b",)), True),
    (U, "spiffe://example.org/ns/*/sa/frontend", identity(uris=(FRONTEND,)), True),
    (U, "https://example.org/ns/a", identity(uris=("https://example.org/ns/A",)), False),
    (U, "https://example.org/n?", identity(uris=("https://example.org/ns",)), False),  # no ?
    (D, "frontend.internal.example.org", identity(dns=("Frontend.Internal.Example.org",)), True),
    (D, "frontend.internal.example.org.", identity(dns=("frontend.internal.example.org",)), True),
    (D, "frontend.internal.example.org", identity(dns=("backend.internal.example.org",)), False),
    (D, "*.example.org", identity(dns=("a.example.org",)), True),
    (D, "*.example.org", identity(dns=("example.org",)), False),
    (D, "*.example.org", identity(dns=("a.b.example.org",)), False),
    (D, "*.example.org", identity(dns=("a.example.org.evil",)), False),
    (D, "*.example.org", identity(dns=("aexample.org",)), False),
    (D, "*.Example.ORG", identity(dns=("x.example.org",)), True),
    (C, "frontend", identity(cn="frontend"), True),
    (C, "frontend", identity(cn="Frontend"), False),
    (C, "front", identity(cn="frontend"), False),
    (C, "frontend", identity(cn=None), False),
    (H, SHA, identity(), True),
    (H, SHA.upper(), identity(), True),
    (H, ":".join(SHA[i : i + 2] for i in range(0, 64, 2)), identity(), True),
    (H, "5" + SHA[1:], identity(), False),
]


@pytest.mark.parametrize(("kind", "pattern", "who", "admitted"), CASES)
def test_semantics(kind: AllowKind, pattern: str, who: PeerIdentity, admitted: bool) -> None:
    rule = AllowRule(kind, pattern)
    assert (match_allow(who, [rule]) == rule) is admitted


def test_spiffe_id_ignores_other_schemes() -> None:
    who = identity(uris=("https://example.org/ns/prod/sa/frontend",))
    assert match_allow(who, [AllowRule(S, "spiffe://example.org/**")]) is None
    assert match_allow(who, [AllowRule(U, "https://example.org/**")]) is not None


def test_first_matching_rule_wins() -> None:
    rules = [AllowRule(C, "billing"), AllowRule(D, "*.example.org"), AllowRule(C, "frontend")]
    who = identity(dns=("a.example.org",))
    assert AllowList(rules).match(who) == rules[1]


def test_empty_list_admits_every_verified_client() -> None:
    assert AllowList([]).admits(identity())
    assert AllowList([]).match(identity()) is None
    assert not AllowList([AllowRule(C, "billing")]).admits(identity())
    assert not AllowList([]) and AllowList([AllowRule(C, "billing")])


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        (S, "https://example.org/x"),
        (S, "spiffe://example.org/**/x"),
        (U, "https://**.example.org/"),
        (D, "a.*.example.org"),
        (D, "*a.example.org"),
        (H, "4f:2a"),
        (H, "z" * 64),
    ],
)
def test_invalid_patterns_fail_at_compile(kind: AllowKind, pattern: str) -> None:
    with pytest.raises(ValueError, match="'"):
        AllowList([AllowRule(kind, pattern)])


# PeerIdentity extraction: what the rules above are matched against.


@pytest.mark.parametrize("version", [None, "a003020105", "a003020103"], ids=["cut", "v6", "v4"])
def test_a_malformed_certificate_is_a_value_error(pki: PkiFiles, version: str | None) -> None:
    """Whatever cryptography raises for bytes that are not a v1-v3 certificate (its own
    InvalidVersion for a version field past v3), a peer's certificate is a ValueError."""
    der = x509.load_pem_x509_certificate(pki.client_cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    if version is None:
        der = der[:40]
    else:
        assert bytes.fromhex("a003020102") in der  # [0] EXPLICIT INTEGER 2: v3
        der = der.replace(bytes.fromhex("a003020102"), bytes.fromhex(version), 1)
    with pytest.raises(ValueError):
        load_certificate(der)
    with pytest.raises(ValueError):
        PeerIdentity.from_der(der)


def test_identity_of_the_development_client(pki: PkiFiles) -> None:
    cert = x509.load_pem_x509_certificate(pki.client_cert.read_bytes())
    who = PeerIdentity.from_der(cert.public_bytes(serialization.Encoding.DER))
    assert who.subject == who.describe().split(" ")[0] == "CN=frontend"
    assert who.spiffe_id == FRONTEND
    assert who.uris == (FRONTEND,)
    assert who.dns_names == ("frontend.internal.example.org",)
    assert who.serial == format(cert.serial_number, "x")
    assert who.sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert who.issuer == "CN=mtlsproxy development root CA"
    assert who.not_after.tzinfo is not None


def test_identity_without_san_or_cn() -> None:
    key = new_key()
    root = make_ca("root", key)
    bare = issue_leaf(new_key(), root, key)
    who = PeerIdentity.from_certificate(bare)
    assert (who.subject, who.subject_cn, who.spiffe_id, who.uris, who.dns_names) == (
        "", None, None, (), (),
    )  # fmt: skip
    assert who.describe() == "(empty subject)"


def test_identity_takes_the_first_cn_and_no_spiffe_id_of_several_uris() -> None:
    """X.509-SVID section 5.2: SVIDs containing more than one URI SAN MUST be rejected: a
    certificate with two spiffe URIs has no SPIFFE ID (it used to get the first one)."""
    key = new_key()
    root = make_ca("root", key)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "one"),
            x509.NameAttribute(NameOID.COMMON_NAME, "two"),
        ]
    )
    uris = ["https://example.org/a", "spiffe://a.org/x", "spiffe://b.org/y"]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.subject)
        .public_key(new_key().public_key())
        .serial_number(0xABC)
        .not_valid_before(root.not_valid_before_utc)
        .not_valid_after(root.not_valid_after_utc)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), False
        )
        .sign(key, hashes.SHA256())
    )
    who = PeerIdentity.from_certificate(cert)
    assert who.subject_cn == "one"
    assert who.spiffe_id is None
    assert who.uris == tuple(uris)
    assert who.serial == "abc"
