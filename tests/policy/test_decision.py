"""The one decision (``policy.decision.decide``): the policy table, audit mode and resumption.

Modes x clients x enforce, as the README's policy table states them; both engines and
``explain`` act on exactly this.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.decision import ClientPolicy, decide
from mtlsproxy.policy.model import AllowKind, AllowRule, ClientAuth, ClientAuthMode
from mtlsproxy.vocabulary.decision import Evidence, Verdict
from mtlsproxy.vocabulary.failures import Alert, Reason, Step

NOW = datetime.now(UTC)
FRONTEND = AllowRule(AllowKind.SPIFFE_ID, "spiffe://example.org/ns/prod/sa/frontend")


def policy(
    pki: PkiFiles, mode: ClientAuthMode, *rules: AllowRule, enforce: bool = True
) -> ClientPolicy:
    auth = ClientAuth(
        mode, ca=pki.client_ca_bundle, crl=pki.crl_bundle, allow=rules, enforce=enforce
    )
    return ClientPolicy.compile(auth)


def chain(path) -> tuple[bytes, ...]:
    return tuple(
        c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(path.read_bytes())
    )


def test_mode_none_admits_anonymously_whatever_is_sent(pki: PkiFiles) -> None:
    decision = decide(ClientPolicy.compile(ClientAuth()), chain(pki.client_untrusted_cert), NOW)
    assert decision.verdict is Verdict.ADMITTED
    assert decision.identity is None and not decision.verified


@pytest.mark.parametrize(
    ("mode", "enforce", "verdict"),
    [
        (ClientAuthMode.REQUEST, True, Verdict.ADMITTED),
        (ClientAuthMode.REQUIRE, True, Verdict.REFUSED),
        (ClientAuthMode.REQUIRE, False, Verdict.WOULD_REFUSE),
    ],
)
def test_no_certificate(pki: PkiFiles, mode, enforce, verdict) -> None:
    decision = decide(policy(pki, mode, enforce=enforce), (), NOW)
    assert decision.verdict is verdict
    assert decision.identity is None and not decision.verified
    if verdict is not Verdict.ADMITTED:
        assert decision.refusal is not None
        assert decision.refusal.step is Step.CLIENT_CERTIFICATE
        assert decision.refusal.reason is Reason.CLIENT_CERT_MISSING
        assert decision.refusal.alert is Alert.CERTIFICATE_REQUIRED


@pytest.mark.parametrize("mode", [ClientAuthMode.REQUEST, ClientAuthMode.REQUIRE])
@pytest.mark.parametrize(
    ("client", "reason", "alert"),
    [
        ("client_expired_cert", Reason.CLIENT_CERT_EXPIRED, Alert.CERTIFICATE_EXPIRED),
        ("client_notyet_cert", Reason.CLIENT_CERT_NOT_YET_VALID, Alert.BAD_CERTIFICATE),
        ("client_revoked_cert", Reason.CLIENT_CERT_REVOKED, Alert.CERTIFICATE_REVOKED),
        ("client_untrusted_cert", Reason.CLIENT_CERT_UNTRUSTED, Alert.UNKNOWN_CA),
        ("client_wrong_eku_cert", Reason.CLIENT_CERT_BAD_USAGE, Alert.UNSUPPORTED_CERTIFICATE),
    ],
)
def test_a_certificate_that_fails_verification_is_refused_in_both_modes(
    pki: PkiFiles, mode, client, reason, alert
) -> None:
    """A presented certificate is verified in request mode too (policy table)."""
    decision = decide(policy(pki, mode), chain(getattr(pki, client)), NOW)
    assert decision.verdict is Verdict.REFUSED
    assert decision.refusal is not None
    assert (decision.refusal.step, decision.refusal.reason) == (Step.CLIENT_VERIFY, reason)
    assert decision.refusal.alert is alert
    audit = decide(policy(pki, mode, enforce=False), chain(getattr(pki, client)), NOW)
    assert audit.verdict is Verdict.WOULD_REFUSE and audit.admitted and not audit.verified
    assert audit.would_refuse == decision.refusal
    assert audit.identity is not None and audit.identity.subject_cn == "frontend"


def test_allow_list(pki: PkiFiles) -> None:
    allowed = decide(policy(pki, ClientAuthMode.REQUIRE, FRONTEND), chain(pki.client_cert), NOW)
    assert allowed.verdict is Verdict.ADMITTED and allowed.verified
    assert allowed.rule == str(FRONTEND)
    other = decide(policy(pki, ClientAuthMode.REQUIRE, FRONTEND), chain(pki.client_other_cert), NOW)
    assert other.verdict is Verdict.REFUSED
    assert other.refusal is not None and other.refusal.step is Step.AUTHORIZE
    assert other.refusal.reason is Reason.IDENTITY_NOT_ALLOWED
    assert other.refusal.alert is Alert.ACCESS_DENIED
    assert other.identity is not None and other.identity.subject_cn == "intruder"
    audit = decide(
        policy(pki, ClientAuthMode.REQUIRE, FRONTEND, enforce=False),
        chain(pki.client_other_cert),
        NOW,
    )
    assert audit.verdict is Verdict.WOULD_REFUSE and audit.would_refuse == other.refusal


def test_the_first_refusal_is_reported(pki: PkiFiles) -> None:
    """Verification comes before the allow-list: an expired outsider is refused as expired."""
    decision = decide(
        policy(pki, ClientAuthMode.REQUIRE, FRONTEND), chain(pki.client_expired_cert), NOW
    )
    assert decision.refusal is not None and decision.refusal.reason is Reason.CLIENT_CERT_EXPIRED


def test_checked_by_openssl_skips_verification_only(pki: PkiFiles) -> None:
    """What OpenSSL verified is not verified twice, but the allow-list still runs."""
    strict = policy(pki, ClientAuthMode.REQUIRE, FRONTEND)
    untrusted = chain(pki.client_untrusted_cert)
    assert decide(strict, untrusted, NOW, Evidence.CHECKED_BY_OPENSSL).verified
    other = decide(strict, chain(pki.client_other_cert), NOW, Evidence.CHECKED_BY_OPENSSL)
    assert other.refusal is not None and other.refusal.step is Step.AUTHORIZE


def test_resumption_is_checked_against_now(pki: PkiFiles) -> None:
    strict = policy(pki, ClientAuthMode.REQUIRE, FRONTEND)
    leaf = chain(pki.client_cert)
    assert decide(strict, leaf, NOW, Evidence.RESUMED).verified
    later = decide(strict, leaf, NOW + timedelta(days=3650), Evidence.RESUMED)
    assert later.refusal is not None and later.refusal.reason is Reason.CLIENT_CERT_EXPIRED
    revoked = decide(strict, chain(pki.client_revoked_cert), NOW, Evidence.RESUMED)
    assert revoked.refusal is not None and revoked.refusal.reason is Reason.CLIENT_CERT_REVOKED


def test_garbage_is_a_named_refusal_not_an_exception(pki: PkiFiles) -> None:
    for evidence in Evidence:
        decision = decide(policy(pki, ClientAuthMode.REQUIRE), (b"\x30\x03garbage",), NOW, evidence)
        assert decision.verdict is Verdict.REFUSED
        assert decision.refusal is not None and decision.refusal.step is Step.CLIENT_VERIFY


def test_checked_by_openssl_parses_each_leaf_once(pki: PkiFiles) -> None:
    """OpenSSL verified the chain; the identity is a pure function of the leaf's DER, parsed
    once per verifier (a fleet presents the same few leaves) and never shared across leaves."""
    strict = policy(pki, ClientAuthMode.REQUIRE)
    first = decide(strict, chain(pki.client_cert), NOW, Evidence.CHECKED_BY_OPENSSL)
    again = decide(strict, chain(pki.client_cert), NOW, Evidence.CHECKED_BY_OPENSSL)
    other = decide(strict, chain(pki.client_other_cert), NOW, Evidence.CHECKED_BY_OPENSSL)
    assert first.identity is not None and again.identity is first.identity
    assert other.identity is not None and other.identity.sha256 != first.identity.sha256


def test_the_identity_cache_is_bounded(pki: PkiFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtlsproxy.policy import verify

    monkeypatch.setattr(verify, "VERIFY_CACHE_SIZE", 1)
    strict = policy(pki, ClientAuthMode.REQUIRE)
    verifier = strict.verifier
    assert verifier is not None
    leaf, other = chain(pki.client_cert)[0], chain(pki.client_other_cert)[0]
    first = verifier.identity_of(leaf)
    verifier.identity_of(other)
    assert verifier.identity_of(leaf) is not first  # evicted, parsed again
    assert verifier.identity_of(b"\x30\x03garbage") is None
