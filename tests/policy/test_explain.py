"""``explain``: the step-by-step account of a client certificate on a route."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mtlsproxy.config.model import CertificateKeyPair, Route, TLSSettings, Upstream
from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.explain import explain
from mtlsproxy.policy.model import AllowKind, AllowRule, ClientAuth, ClientAuthMode
from mtlsproxy.vocabulary.decision import Verdict
from mtlsproxy.vocabulary.failures import Reason, Step

NOW = datetime.now(UTC)
FRONTEND_RULE = AllowRule(AllowKind.SPIFFE_ID, "spiffe://example.org/ns/prod/*/frontend")


def route(pki: PkiFiles, mode: ClientAuthMode, *rules: AllowRule, ca: Path | None = None) -> Route:
    return Route(
        name="default",
        sni=(),
        tls=TLSSettings((CertificateKeyPair(pki.server_cert, pki.server_key),)),
        client_auth=ClientAuth(
            mode, ca=ca or pki.client_ca_bundle, crl=pki.crl_bundle, allow=rules
        ),
        upstream=Upstream(host="127.0.0.1", port=8080),
    )


def test_admitted(pki: PkiFiles) -> None:
    result = explain(
        route(pki, ClientAuthMode.REQUIRE, FRONTEND_RULE), pki.client_cert.read_bytes(), NOW
    )
    text = "\n".join(result.lines)
    assert (result.admitted, result.step, result.reason) == (True, None, None)
    assert (
        "seed step 2: route 'default' sends a CertificateRequest (client_auth.mode = require)"
        in text
    )
    assert (
        "seed step 5: the client presents CN=frontend (spiffe://example.org/ns/prod/sa/frontend), "
        "1 certificate" in text
    )
    assert "seed step 6: chain verifies to CN=mtlsproxy development root CA" in text
    assert "(expires in 364 days)" in text
    assert "not revoked (CRL crls.pem, next update" in text
    assert f"authorize: allowed by rule {FRONTEND_RULE}" in text
    assert "127.0.0.1:8080" in text
    assert result.lines[-1] == "ADMITTED"


def test_intermediate_chain_is_checked_against_both_crls(pki: PkiFiles) -> None:
    result = explain(
        route(pki, ClientAuthMode.REQUIRE), pki.client_intermediate_cert.read_bytes(), NOW
    )
    assert result.admitted
    assert "2 certificates" in result.lines[1]
    assert "authorize: no allow-list, every verified client is admitted" in result.lines
    assert sum("not revoked (CRL crls.pem" in line for line in result.lines) == 2


def test_refused_by_the_allow_list(pki: PkiFiles) -> None:
    rules = (FRONTEND_RULE, AllowRule(AllowKind.SUBJECT_CN, "billing"))
    result = explain(
        route(pki, ClientAuthMode.REQUEST, *rules), pki.client_other_cert.read_bytes(), NOW
    )
    assert (result.admitted, result.step, result.reason) == (
        False, Step.AUTHORIZE, Reason.IDENTITY_NOT_ALLOWED,
    )  # fmt: skip
    refusal = next(line for line in result.lines if line.startswith("authorize: refused"))
    assert "spiffe://example.org/ns/dev/sa/intruder" in refusal
    assert f"  rule {rules[1]}" in result.lines
    assert result.lines[-1] == "REFUSED at step authorize (identity_not_allowed)"


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        ("client_expired_cert", Reason.CLIENT_CERT_EXPIRED),
        ("client_revoked_cert", Reason.CLIENT_CERT_REVOKED),
        ("client_untrusted_cert", Reason.CLIENT_CERT_UNTRUSTED),
    ],
)
def test_refused_at_verification(pki: PkiFiles, client: str, reason: Reason) -> None:
    result = explain(route(pki, ClientAuthMode.REQUIRE), getattr(pki, client).read_bytes(), NOW)
    assert (result.admitted, result.step, result.reason) == (False, Step.CLIENT_VERIFY, reason)
    assert result.lines[-2].startswith("seed step 6: verification fails: CN=frontend")
    assert result.lines[-1] == f"REFUSED at step client_verify ({reason})"


def test_mode_none_never_asks(pki: PkiFiles) -> None:
    result = explain(route(pki, ClientAuthMode.NONE), b"garbage", NOW)
    assert result.admitted
    assert "sends no CertificateRequest" in result.lines[0]
    assert result.lines[-1].startswith("ADMITTED (anonymous")


@pytest.mark.parametrize(
    ("mode", "admitted", "reason"),
    [
        (ClientAuthMode.REQUEST, True, None),
        (ClientAuthMode.REQUIRE, False, Reason.CLIENT_CERT_MISSING),
    ],
)
def test_no_certificate(
    pki: PkiFiles, mode: ClientAuthMode, admitted: bool, reason: Reason | None
) -> None:
    result = explain(route(pki, mode), b"", NOW)
    assert (result.admitted, result.reason) == (admitted, reason)


@pytest.mark.parametrize(
    "data", [b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_garbage_pem(pki: PkiFiles, data: bytes) -> None:
    result = explain(route(pki, ClientAuthMode.REQUIRE), data, NOW)
    assert (result.admitted, result.reason) == (False, Reason.CLIENT_CERT_INVALID)
    assert "no parsable PEM certificate" in result.lines[1]


def test_broken_configuration_is_a_line(pki: PkiFiles, tmp_path: Path) -> None:
    broken = route(pki, ClientAuthMode.REQUIRE, ca=tmp_path / "missing.pem")
    result = explain(broken, pki.client_cert.read_bytes(), NOW)
    assert not result.admitted
    assert result.lines[-2].startswith("configuration: ")
    assert "missing.pem" in result.lines[-2]


@pytest.mark.parametrize(
    ("client", "chain", "step", "reason"),
    [
        ("other", "client_other_cert", Step.AUTHORIZE, Reason.IDENTITY_NOT_ALLOWED),
        ("expired", "client_expired_cert", Step.CLIENT_VERIFY, Reason.CLIENT_CERT_EXPIRED),
        ("none", None, Step.CLIENT_CERTIFICATE, Reason.CLIENT_CERT_MISSING),
    ],
)
def test_audit_mode_says_admitted_as_would_refuse(
    pki: PkiFiles, client: str, chain: str | None, step: Step, reason: Reason
) -> None:
    """On an ``enforce: false`` route explain says what the proxy does: admit, as would_refuse."""
    audit = route(pki, ClientAuthMode.REQUIRE, FRONTEND_RULE)
    audit = dataclasses.replace(
        audit, client_auth=dataclasses.replace(audit.client_auth, enforce=False)
    )
    pem = getattr(pki, chain).read_bytes() if chain else b""
    result = explain(audit, pem, NOW)
    assert result.admitted and result.verdict is Verdict.WOULD_REFUSE
    assert (result.step, result.reason) == (step, reason)
    assert result.lines[-1].startswith("ADMITTED in audit mode")
    assert f"would refuse at step {step} ({reason})" in result.lines[-1]


def test_on_engine_openssl_audit_mode_cannot_admit_a_verification_failure(pki: PkiFiles) -> None:
    """explain says what the route's engine does: OpenSSL fails the handshake."""
    audit = route(pki, ClientAuthMode.REQUIRE)
    audit = dataclasses.replace(
        audit, client_auth=dataclasses.replace(audit.client_auth, enforce=False)
    )
    pem = pki.client_expired_cert.read_bytes()
    native = explain(audit, pem, NOW)
    assert native.admitted and native.verdict is Verdict.WOULD_REFUSE
    openssl = explain(audit, pem, NOW, verifies_in_handshake=True)
    assert not openssl.admitted and openssl.verdict is Verdict.REFUSED
    assert openssl.reason is Reason.CLIENT_CERT_EXPIRED
    assert any(line.startswith("engine openssl: OpenSSL verifies") for line in openssl.lines)
    assert "audit mode cannot admit it on engine openssl" in openssl.lines[-2]
    # An allow-list refusal is still admitted in audit mode on OpenSSL.
    other = explain(
        dataclasses.replace(
            audit,
            client_auth=dataclasses.replace(audit.client_auth, allow=(FRONTEND_RULE,)),
        ),
        pki.client_other_cert.read_bytes(),
        NOW,
        verifies_in_handshake=True,
    )
    assert other.admitted and other.verdict is Verdict.WOULD_REFUSE
