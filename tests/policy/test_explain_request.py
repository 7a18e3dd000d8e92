"""``explain_request``: after the handshake's account, which ``http_authorization`` rule decides
for that client and request, and why."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from mtlsproxy.pki import PkiFiles
from mtlsproxy.policy.explain import explain, explain_request
from mtlsproxy.policy.model import AllowKind, AllowRule, ClientAuthMode
from mtlsproxy.policy.paths import (
    PathAuthorization,
    PathMatch,
    PathReason,
    PathRule,
    Requirement,
)
from mtlsproxy.vocabulary.decision import Verdict
from tests.policy.test_explain import route

NOW = datetime.now(UTC)
FRONTEND = "spiffe://example.org/ns/prod/sa/frontend"
RULES = PathAuthorization(
    rules=(
        PathRule(PathMatch.PREFIX, "/admin", Requirement.VERIFIED,
                 allow=(AllowRule(AllowKind.SPIFFE_ID, FRONTEND),), name="admin"),
        PathRule(PathMatch.PREFIX, "/api/", Requirement.VERIFIED, methods=("GET",)),
        PathRule(PathMatch.PREFIX, "/public/", Requirement.ANY),
    ),
    default=Requirement.DENY,
)  # fmt: skip


def account(pki: PkiFiles, cert: str | None, method: str, target: str, **options: object):  # type: ignore[no-untyped-def]
    chain = (pki.directory / f"{cert}.crt").read_bytes() if cert else b""
    mode = options.pop("mode", ClientAuthMode.REQUEST)
    out = explain(route(pki, mode), chain, NOW)  # type: ignore[arg-type]
    return explain_request(out, options.pop("rules", RULES), method, target)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cert", "method", "target", "last", "reason"),
    [
        ("client", "GET", "/admin/x", "ADMITTED", None),
        ("client-other", "GET", "/admin/x",
         "REFUSED with 403 Forbidden by rule admin (identity_not_allowed)",
         PathReason.IDENTITY_NOT_ALLOWED),
        (None, "GET", "/admin", "REFUSED with 403 Forbidden by rule admin (not_verified)",
         PathReason.NOT_VERIFIED),
        ("client-other", "GET", "/api/items", "ADMITTED", None),
        ("client-other", "POST", "/api/items", "REFUSED with 403 Forbidden by the default (denied)",
         PathReason.DENIED),
        (None, "GET", "/public/x", "ADMITTED", None),
        ("client", "GET", "/public/../admin",
         "REFUSED with 400 Bad Request before any rule (unsafe_path)", PathReason.UNSAFE_PATH),
    ],
)  # fmt: skip
def test_the_deciding_rule_is_named(
    pki: PkiFiles,
    cert: str | None,
    method: str,
    target: str,
    last: str,
    reason: PathReason | None,
) -> None:
    out = account(pki, cert, method, target)
    assert out.lines[-1] == last
    assert out.admitted == (reason is None) and out.request_reason == reason
    assert f"request: {method} {target}" in out.lines
    text = "\n".join(out.lines)
    if target.startswith("/admin"):
        assert "rule admin decides: the first whose methods and path match (prefix /admin)" in text
    if reason is PathReason.IDENTITY_NOT_ALLOWED:
        assert f"  allow spiffe_id: {FRONTEND}" in out.lines
        assert "CN=intruder" in text
    if reason is PathReason.DENIED:
        assert "no rule matches; the default decides (http_authorization.default = deny)" in text
    if cert is None:
        assert "client: anonymous" in out.lines
    else:
        assert any(line.startswith("client: CN=") and line.endswith(", verified")
                   for line in out.lines)  # fmt: skip


def test_an_unverified_client_in_audit_mode(pki: PkiFiles) -> None:
    base = route(pki, ClientAuthMode.REQUIRE, AllowRule(AllowKind.SPIFFE_ID, FRONTEND))
    audit = dataclasses.replace(base, client_auth=dataclasses.replace(base.client_auth,
                                                                      enforce=False))  # fmt: skip
    out = explain(audit, (pki.directory / "client-other.crt").read_bytes(), NOW)
    assert out.verdict is Verdict.WOULD_REFUSE and out.identity is not None and not out.verified
    out = explain_request(out, RULES, "GET", "/api/x")
    assert out.lines[-1] == "REFUSED with 403 Forbidden by rule 1 (not_verified)"
    assert "an unverified client sent it" in out.lines[-2]


def test_a_route_without_rules_forwards_every_request(pki: PkiFiles) -> None:
    out = account(pki, None, "DELETE", "/anything", rules=PathAuthorization())
    assert out.lines[-2:] == [
        "http_authorization: none on this route, every request is forwarded",
        "ADMITTED",
    ]


def test_a_refused_handshake_reads_no_request(pki: PkiFiles) -> None:
    out = account(pki, "client-expired", "GET", "/public/x")
    assert out.lines[-1] == "the request is never read: the handshake does not admit the client"
    assert not out.admitted


AUDIT = dataclasses.replace(RULES, enforce=False)


@pytest.mark.parametrize(
    ("cert", "target", "last"),
    [
        ("client-other", "/admin/x",
         "ADMITTED in audit mode (http_authorization.enforce: false): would refuse (audit mode) "
         "with 403 Forbidden by rule admin (identity_not_allowed); the request is forwarded"),
        (None, "/elsewhere",
         "ADMITTED in audit mode (http_authorization.enforce: false): would refuse (audit mode) "
         "with 403 Forbidden by the default (denied); the request is forwarded"),
    ],
)  # fmt: skip
def test_audit_mode_admits_what_the_rules_would_refuse(
    pki: PkiFiles, cert: str | None, target: str, last: str
) -> None:
    out = account(pki, cert, "GET", target, rules=AUDIT)
    assert out.lines[-1] == last
    assert out.admitted and out.verdict is Verdict.WOULD_REFUSE
    assert out.request_reason in (PathReason.IDENTITY_NOT_ALLOWED, PathReason.DENIED)


def test_audit_mode_admits_what_the_rules_admit_plainly(pki: PkiFiles) -> None:
    out = account(pki, "client", "GET", "/admin/x", rules=AUDIT)
    assert out.lines[-1] == "ADMITTED" and out.verdict is Verdict.ADMITTED


def test_audit_mode_still_refuses_an_unsafe_path(pki: PkiFiles) -> None:
    out = account(pki, "client", "GET", "/public/../admin", rules=AUDIT)
    assert out.lines[-1] == "REFUSED with 400 Bad Request before any rule (unsafe_path)"
    assert not out.admitted
    assert any("enforced in audit mode too" in line for line in out.lines)
