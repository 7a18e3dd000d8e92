"""Verifier hardening: nothing admitted that OpenSSL would refuse (verify.py docstring).

One section per class of the hardening issue, each case from the RFC or spec clause it cites.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mtlsproxy.pki import write_pem
from mtlsproxy.policy.model import ClientAuth, ClientAuthMode
from mtlsproxy.policy.verify import (
    CertificateRejected,
    ClientVerifier,
    crl_signature_problem,
    native_support_problem,
)
from mtlsproxy.vocabulary.failures import Reason
from mtlsproxy.vocabulary.identity import PeerIdentity

from .minting import NOW, cert, crl, dp, idp, key, ku, name, with_duplicate_eku

ROOT_KEY, INTER_KEY, LEAF_KEY = key("ec256", 0), key("ec256", 1), key("ec256", 2)
ROOT = cert("root", ROOT_KEY, ca=True)
INTER = cert("inter", INTER_KEY, ROOT, ROOT_KEY, ca=True, path_length=0)


def reason(verifier: ClientVerifier, chain: list[x509.Certificate]) -> Reason | None:
    try:
        verifier.verify(chain, NOW)
    except CertificateRejected as rejected:
        return rejected.reason
    return None


def der(*certs: x509.Certificate) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(Encoding.DER) for c in certs)


def with_crls(tmp_path: Path, *crls: x509.CertificateRevocationList, cas=(ROOT,)) -> ClientVerifier:
    auth = ClientAuth(
        ClientAuthMode.REQUIRE,
        ca=write_pem(tmp_path / "ca.pem", *cas),
        crl=write_pem(tmp_path / "crl.pem", *crls),
    )
    return ClientVerifier.from_policy(auth)


# Name constraints (RFC 5280 section 4.2.1.10): the subject of a SAN-less leaf is not a loophole.

DNS_ONLY = x509.NameConstraints([x509.DNSName("partner.example")], None)
PARTNER_KEY = key("ec256", 3)
PARTNER = cert("partner CA", PARTNER_KEY, ROOT, ROOT_KEY, ca=True, name_constraints=DNS_ONLY)


def test_san_less_leaf_under_a_name_constrained_ca_is_refused() -> None:
    admin = cert("admin", LEAF_KEY, PARTNER, PARTNER_KEY)
    assert reason(ClientVerifier([ROOT]), [admin, PARTNER]) is Reason.CLIENT_CERT_INVALID


def test_host_like_cn_without_dns_san_is_checked_against_dns_constraints() -> None:
    uri = [x509.UniformResourceIdentifier("https://svc.partner.example/")]
    outside = cert("admin.corp.example", LEAF_KEY, PARTNER, PARTNER_KEY, sans=uri)
    inside = cert("svc.partner.example", LEAF_KEY, PARTNER, PARTNER_KEY, sans=uri)
    verifier = ClientVerifier([ROOT])
    assert reason(verifier, [outside, PARTNER]) is Reason.CLIENT_CERT_INVALID
    assert reason(verifier, [inside, PARTNER]) is None


def test_subject_email_is_checked_against_rfc822_constraints() -> None:
    constraints = x509.NameConstraints([x509.RFC822Name("partner.example")], None)
    ca = cert("mail CA", PARTNER_KEY, ROOT, ROOT_KEY, ca=True, name_constraints=constraints)
    dns = [x509.DNSName("svc.partner.example")]
    outside = cert(name("svc", email="root@corp.example"), LEAF_KEY, ca, PARTNER_KEY, sans=dns)
    inside = cert(name("svc", email="svc@partner.example"), LEAF_KEY, ca, PARTNER_KEY, sans=dns)
    verifier = ClientVerifier([ROOT])
    assert reason(verifier, [outside, ca]) is Reason.CLIENT_CERT_INVALID
    assert reason(verifier, [inside, ca]) is None


# Key usage (RFC 5280 section 4.2.1.3): a TLS client signs CertificateVerify.


def test_leaf_key_usage_without_digital_signature_is_bad_usage() -> None:
    usage = ku(ca=False, digital_signature=False, key_encipherment=True)
    leaf = cert("svc", LEAF_KEY, ROOT, ROOT_KEY, key_usage=usage)
    assert reason(ClientVerifier([ROOT]), [leaf]) is Reason.CLIENT_CERT_BAD_USAGE


def test_netscape_type_without_ssl_client_is_bad_usage() -> None:
    server_only = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("2.16.840.1.113730.1.1"), b"\x03\x02\x06\x40"
    )
    leaf = cert("svc", LEAF_KEY, ROOT, ROOT_KEY, extra=[(server_only, False)])
    assert reason(ClientVerifier([ROOT]), [leaf]) is Reason.CLIENT_CERT_BAD_USAGE


def test_ca_without_key_usage_is_accepted_as_openssl_does() -> None:
    root = cert("bare root", ROOT_KEY, ca=True, key_usage=None)
    leaf = cert("svc", LEAF_KEY, root, ROOT_KEY)
    assert reason(ClientVerifier([root]), [leaf]) is None
    wrong = cert("bad root", ROOT_KEY, ca=True, key_usage=ku(ca=False))
    leaf = cert("svc", LEAF_KEY, wrong, ROOT_KEY)
    assert reason(ClientVerifier([wrong]), [leaf]) is not None


# Key floor: OpenSSL security level 2, for every certificate of the path.


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("kind", ["rsa1024", "ec192", "ec224", "dsa2048"])
def test_weak_leaf_keys_are_invalid(kind: str) -> None:
    leaf = cert("svc", key(kind), ROOT, ROOT_KEY)
    assert reason(ClientVerifier([ROOT]), [leaf]) is Reason.CLIENT_CERT_INVALID


@pytest.mark.parametrize("kind", ["rsa2048", "ec256", "ec384", "ec521", "ed25519"])
def test_strong_leaf_keys_verify(kind: str) -> None:
    leaf = cert("svc", key(kind), ROOT, ROOT_KEY)
    assert reason(ClientVerifier([ROOT]), [leaf]) is None


def test_weak_intermediate_key_is_invalid() -> None:
    weak = key("rsa1024")
    inter = cert("weak inter", weak, ROOT, ROOT_KEY, ca=True)
    leaf = cert("svc", LEAF_KEY, inter, weak)
    assert reason(ClientVerifier([ROOT]), [leaf, inter]) is Reason.CLIENT_CERT_INVALID


# Unparsable certificates: a named refusal, never an exception.


def test_duplicate_extension_is_invalid_not_an_exception() -> None:
    dup = with_duplicate_eku(LEAF_KEY, ROOT, ROOT_KEY)
    leaf = x509.load_der_x509_certificate(dup)
    identity = PeerIdentity.from_certificate(leaf)  # total
    assert identity.subject_cn == "dup" and identity.uris == ()
    verifier = ClientVerifier([ROOT])
    assert reason(verifier, [leaf]) is Reason.CLIENT_CERT_INVALID
    good = cert("svc", LEAF_KEY, ROOT, ROOT_KEY)
    assert reason(verifier, [good, leaf]) is Reason.CLIENT_CERT_INVALID  # a sent intermediate


# CRLs: scope (IssuingDistributionPoint), usability, fail closed.


def test_crl_scoped_to_ca_certificates_does_not_cover_a_leaf(tmp_path: Path) -> None:
    verifier = with_crls(
        tmp_path, crl(ROOT, ROOT_KEY), crl(INTER, INTER_KEY, scope=idp(only_ca=True))
    )
    leaf = cert("svc", LEAF_KEY, INTER, INTER_KEY)
    assert reason(verifier, [leaf, INTER]) is Reason.CLIENT_CERT_UNTRUSTED


def test_crl_scoped_to_user_certificates_does_not_cover_an_intermediate(tmp_path: Path) -> None:
    verifier = with_crls(
        tmp_path, crl(ROOT, ROOT_KEY, scope=idp(only_user=True)), crl(INTER, INTER_KEY)
    )
    leaf = cert("svc", LEAF_KEY, INTER, INTER_KEY)
    assert reason(verifier, [leaf, INTER]) is Reason.CLIENT_CERT_UNTRUSTED


def test_self_signed_anchor_needs_a_covering_crl_as_in_openssl(tmp_path: Path) -> None:
    """OpenSSL's CRL_CHECK_ALL checks the root against its own CRLs: a root CRL scoped to user
    certificates leaves the root uncovered, so even a leaf it issued directly is refused."""
    verifier = with_crls(tmp_path, crl(ROOT, ROOT_KEY, scope=idp(only_user=True)))
    direct = cert("svc", LEAF_KEY, ROOT, ROOT_KEY)
    assert reason(verifier, [direct]) is Reason.CLIENT_CERT_UNTRUSTED
    assert reason(with_crls(tmp_path, crl(ROOT, ROOT_KEY)), [direct]) is None


def test_crl_distribution_point_must_match(tmp_path: Path) -> None:
    a, b = "http://crl.example/a.crl", "http://crl.example/b.crl"
    verifier = with_crls(tmp_path, crl(ROOT, ROOT_KEY), crl(INTER, INTER_KEY, scope=idp(uri=a)))
    assert (
        reason(verifier, [cert("svc", LEAF_KEY, INTER, INTER_KEY, crl_dp=[dp(a)]), INTER]) is None
    )
    other = cert("svc", LEAF_KEY, INTER, INTER_KEY, crl_dp=[dp(b)])
    assert reason(verifier, [other, INTER]) is Reason.CLIENT_CERT_UNTRUSTED
    none = cert("svc", LEAF_KEY, INTER, INTER_KEY)  # no CRLDP: a partitioned CRL covers it not
    assert reason(verifier, [none, INTER]) is Reason.CLIENT_CERT_UNTRUSTED
    some = frozenset({x509.ReasonFlags.key_compromise})
    partial = cert("svc", LEAF_KEY, INTER, INTER_KEY, crl_dp=[dp(a, some)])
    assert reason(verifier, [partial, INTER]) is Reason.CLIENT_CERT_UNTRUSTED


def test_scoped_crl_still_revokes_what_it_covers(tmp_path: Path) -> None:
    leaf = cert("svc", LEAF_KEY, INTER, INTER_KEY)
    revoking = crl(INTER, INTER_KEY, [leaf.serial_number], scope=idp(only_user=True))
    verifier = with_crls(tmp_path, crl(ROOT, ROOT_KEY), revoking)
    assert reason(verifier, [leaf, INTER]) is Reason.CLIENT_CERT_REVOKED


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (lambda: crl(ROOT, ROOT_KEY, delta_of=1), "delta CRL"),
        (lambda: crl(ROOT, ROOT_KEY, number_critical=True), "critical extension"),
        (lambda: crl(ROOT, ROOT_KEY, scope=idp(indirect=True)), "indirect"),
        (
            lambda: crl(
                ROOT, ROOT_KEY, scope=idp(reasons=frozenset({x509.ReasonFlags.superseded}))
            ),
            "onlySomeReasons",
        ),
    ],
)
def test_unusable_crl_forms_fail_at_load(tmp_path: Path, bad, words: str) -> None:
    with pytest.raises(ValueError, match=words) as caught:
        with_crls(tmp_path, bad())
    assert "crl.pem" in str(caught.value)
    assert words in (crl_signature_problem(bad(), [ROOT]) or "")


def test_crl_of_a_ca_without_crl_sign(tmp_path: Path) -> None:
    no_crl_sign = ku(ca=True, crl_sign=False)
    root = cert("root", ROOT_KEY, ca=True, key_usage=no_crl_sign)
    with pytest.raises(ValueError, match="cRLSign"):
        with_crls(tmp_path, crl(root, ROOT_KEY), cas=(root,))
    # An intermediate (sent by the client) is judged when the path is built: fail closed.
    inter = cert("inter", INTER_KEY, ROOT, ROOT_KEY, ca=True, key_usage=no_crl_sign)
    verifier = with_crls(tmp_path, crl(ROOT, ROOT_KEY), crl(inter, INTER_KEY))
    leaf = cert("svc", LEAF_KEY, inter, INTER_KEY)
    assert reason(verifier, [leaf, inter]) is Reason.CLIENT_CERT_UNTRUSTED


# Over-strictness of the native path: what it cannot check is named at load.


def test_native_support_problem() -> None:
    assert native_support_problem([ROOT, INTER]) is None
    uri = x509.NameConstraints([x509.UniformResourceIdentifier(".partner.example")], None)
    assert "UniformResourceIdentifier" in (
        native_support_problem([cert("u", ROOT_KEY, ca=True, name_constraints=uri)]) or ""
    )
    dirname = x509.NameConstraints([x509.DirectoryName(name("partner"))], None)
    assert "DirectoryName" in (
        native_support_problem([cert("d", ROOT_KEY, ca=True, name_constraints=dirname)]) or ""
    )
    assert "Ed25519" in (native_support_problem([cert("e", key("ed25519"), ca=True)]) or "")
    assert "too weak" in (native_support_problem([cert("w", key("rsa1024"), ca=True)]) or "")
