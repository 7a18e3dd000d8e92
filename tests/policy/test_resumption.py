"""Resumption (``Evidence.RESUMED``): the full verification again, with the CA bundle, CRLs and
clock of now; ``resumable_until`` bounds how long a session may be resumed; ``decide`` is total.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtlsproxy.pki import write_pem
from mtlsproxy.policy.decision import ClientPolicy, decide, resumable_until
from mtlsproxy.policy.model import ClientAuth, ClientAuthMode
from mtlsproxy.vocabulary.decision import Evidence, Verdict
from mtlsproxy.vocabulary.failures import Reason

from .minting import DAY, NOW, cert, crl, key, with_duplicate_eku

ROOT_KEY, INTER_KEY, LEAF_KEY = key("ec256", 0), key("ec256", 1), key("ec256", 2)
ROOT = cert("root", ROOT_KEY, ca=True)
INTER = cert("inter", INTER_KEY, ROOT, ROOT_KEY, ca=True, path_length=0)


def der(*certs: x509.Certificate) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(Encoding.DER) for c in certs)


def resumption_policy(tmp_path: Path, *crls: x509.CertificateRevocationList) -> ClientPolicy:
    auth = ClientAuth(
        ClientAuthMode.REQUIRE,
        ca=write_pem(tmp_path / "ca.pem", ROOT),
        crl=write_pem(tmp_path / "crl.pem", *crls) if crls else None,
    )
    return ClientPolicy.compile(auth)


def test_resumed_full_chain_is_verified_again(tmp_path: Path) -> None:
    expired_inter = cert(
        "inter", INTER_KEY, ROOT, ROOT_KEY, ca=True, not_after=NOW + timedelta(hours=1)
    )
    leaf = cert("svc", LEAF_KEY, expired_inter, INTER_KEY)
    policy = resumption_policy(tmp_path)
    assert decide(policy, der(leaf, expired_inter), NOW, Evidence.RESUMED).verified
    later = decide(policy, der(leaf, expired_inter), NOW + DAY, Evidence.RESUMED)
    assert later.refusal is not None and later.refusal.reason is Reason.CLIENT_CERT_EXPIRED
    assert (
        resumable_until(policy, der(leaf, expired_inter), NOW) == expired_inter.not_valid_after_utc
    )


def test_resumed_lone_leaf_of_an_intermediate_falls_back_to_its_own_checks(tmp_path: Path) -> None:
    leaf = cert("svc", LEAF_KEY, INTER, INTER_KEY)
    revoked = cert("gone", LEAF_KEY, INTER, INTER_KEY)
    policy = resumption_policy(
        tmp_path, crl(ROOT, ROOT_KEY), crl(INTER, INTER_KEY, [revoked.serial_number])
    )
    assert decide(policy, der(leaf), NOW, Evidence.RESUMED).verified
    gone = decide(policy, der(revoked), NOW, Evidence.RESUMED)
    assert gone.refusal is not None and gone.refusal.reason is Reason.CLIENT_CERT_REVOKED
    # A leaf of an issuer nobody vouched for is not rescued by the fallback's name match.
    stale = decide(policy, der(leaf), NOW + 8 * DAY, Evidence.RESUMED)
    assert stale.refusal is not None and stale.refusal.reason is Reason.CLIENT_CERT_UNTRUSTED


def test_stale_crl_refuses_a_resumption_as_a_full_handshake(tmp_path: Path) -> None:
    leaf = cert("svc", LEAF_KEY, ROOT, ROOT_KEY)
    policy = resumption_policy(tmp_path, crl(ROOT, ROOT_KEY, next_update=NOW + DAY))
    assert decide(policy, der(leaf), NOW, Evidence.RESUMED).verified
    for evidence in (Evidence.UNCHECKED, Evidence.RESUMED):
        decision = decide(policy, der(leaf), NOW + 2 * DAY, evidence)
        assert decision.refusal is not None
        assert decision.refusal.reason is Reason.CLIENT_CERT_UNTRUSTED
    assert resumable_until(policy, der(leaf), NOW) == NOW + DAY


def test_resumable_until_is_none_for_what_does_not_verify(tmp_path: Path) -> None:
    policy = resumption_policy(tmp_path)
    assert resumable_until(policy, (b"junk",), NOW) is None
    assert resumable_until(policy, (), NOW) is None
    eku = [ExtendedKeyUsageOID.SERVER_AUTH]
    assert resumable_until(policy, der(cert("s", LEAF_KEY, ROOT, ROOT_KEY, eku=eku)), NOW) is None


def test_decide_is_total_for_an_unparsable_certificate(tmp_path: Path) -> None:
    """A duplicate extension is a named refusal for every kind of evidence, never an exception
    (a resumed session used to be admitted: its leaf was only checked for expiry)."""
    dup = with_duplicate_eku(LEAF_KEY, ROOT, ROOT_KEY)
    policy = resumption_policy(tmp_path)
    for evidence in (Evidence.UNCHECKED, Evidence.RESUMED):
        decision = decide(policy, (dup,), NOW, evidence)
        assert decision.verdict is Verdict.REFUSED
        assert decision.refusal is not None
        assert decision.refusal.reason is Reason.CLIENT_CERT_INVALID
    assert decide(policy, (dup,), NOW, Evidence.CHECKED_BY_OPENSSL).identity is not None
