"""Per-path authorization (``policy.paths``): the request-target check that keeps a rule from
being bypassed by an encoding, rule matching, and the decision for each kind of client."""

from __future__ import annotations

import pytest

from mtlsproxy.pki import issue_leaf, make_ca, new_key
from mtlsproxy.policy.model import AllowKind, AllowRule
from mtlsproxy.policy.paths import (
    PathAuthorization,
    PathMatch,
    PathPolicy,
    PathReason,
    PathRule,
    Requirement,
    UnsafePath,
    check_target,
    compiled,
)
from mtlsproxy.vocabulary.identity import PeerIdentity

FRONTEND = "spiffe://example.org/ns/prod/sa/frontend"

ACCEPTED = {
    "/": "/",
    "/admin": "/admin",
    "/admin/": "/admin/",
    "/admin/users?id=1&x=%2F..": "/admin/users",  # the query is not compared, nor checked
    "/a-b_c.d~e/f:g@h!$&'()*+,=": "/a-b_c.d~e/f:g@h!$&'()*+,=",
    "/caf%C3%A9": "/caf%C3%A9",  # non-ASCII, encoded: no upstream reads it as ASCII
    "/a%20b": "/a%20b",  # a space, encoded
    "/a%3Fb": "/a%3Fb",  # an encoded ? is part of the path
    "/..a/a../.a.": "/..a/a../.a.",  # dots inside a segment are not dot segments
}

REFUSED = [
    "*",  # asterisk-form (OPTIONS *)
    "http://api/admin",  # absolute-form
    "api.example.org:443",  # authority-form (CONNECT)
    "admin",
    "/admin/../public",
    "/public/../admin",
    "/./admin",
    "/admin/.",
    "/admin/..",
    "//admin",
    "/admin//users",
    "/%2e%2e/admin",
    "/%2E/admin",
    "/admin%2fusers",
    "/admin%2Fusers",
    "/%61dmin",  # an encoded unreserved character: /admin to a decoding upstream
    "/%41dmin",
    "/admin%7E",
    "/a%5cb",  # encoded backslash
    "/a\\b",
    "/admin;jsessionid=1",  # path parameters: /;x/admin is /admin to a servlet container
    "/;x/admin",
    "/a%3bb",
    "/a%25%32%66b",  # double encoding
    "/a%00b",
    "/a%0Ab",
    "/a%7f",
    "/a%zz",  # a bad escape
    "/a%2",
    "/a b",
    "/a\tb",
    "/caf\xe9",  # raw non-ASCII
    "/a#frag",
    '/a"b',
    "/a<b>",
    "/a|b",
    "/a{b}",
    "/a^b",
    "/a`b",
]


@pytest.mark.parametrize(("target", "path"), ACCEPTED.items())
def test_normalized_targets_are_accepted(target: str, path: str) -> None:
    assert check_target(target) == path


@pytest.mark.parametrize("target", REFUSED)
def test_targets_a_decoding_upstream_could_read_otherwise_are_refused(target: str) -> None:
    with pytest.raises(UnsafePath):
        check_target(target)


@pytest.fixture(scope="module")
def identities() -> dict[str, PeerIdentity]:
    key = new_key("ec256")
    ca = make_ca("paths test CA", key)

    def leaf(cn: str, uri: str) -> PeerIdentity:
        cert = issue_leaf(new_key("ec256"), ca, key, common_name=cn, uris=[uri])
        return PeerIdentity.from_certificate(cert)

    return {
        "frontend": leaf("frontend", FRONTEND),
        "intruder": leaf("intruder", "spiffe://example.org/ns/dev/sa/intruder"),
    }


RULES = PathAuthorization(
    rules=(
        PathRule(
            PathMatch.PREFIX, "/admin", Requirement.VERIFIED,
            allow=(AllowRule(AllowKind.SPIFFE_ID, FRONTEND),), name="admin",
        ),
        PathRule(PathMatch.PREFIX, "/api/", Requirement.VERIFIED),
        PathRule(PathMatch.EXACT, "/api", Requirement.VERIFIED, methods=("GET", "HEAD")),
        PathRule(PathMatch.PREFIX, "/public", Requirement.ANY),
        PathRule(PathMatch.PREFIX, "/internal", Requirement.DENY, name="internal"),
    ),
)  # fmt: skip


@pytest.mark.parametrize(
    ("method", "target", "who", "admitted", "rule", "reason"),
    [
        ("GET", "/admin", "frontend", True, "admin", None),
        ("POST", "/admin/users?x", "frontend", True, "admin", None),
        ("GET", "/administrator", "frontend", True, "admin", None),  # a string prefix
        ("GET", "/admin", "intruder", False, "admin", PathReason.IDENTITY_NOT_ALLOWED),
        ("GET", "/admin", None, False, "admin", PathReason.NOT_VERIFIED),
        ("GET", "/admin", "unverified", False, "admin", PathReason.NOT_VERIFIED),
        ("GET", "/api/items", "intruder", True, "1", None),
        ("GET", "/api/items", None, False, "1", PathReason.NOT_VERIFIED),
        ("GET", "/api", "intruder", True, "2", None),
        ("DELETE", "/api", None, True, "default", None),  # methods: GET, HEAD only
        ("get", "/api", None, True, "default", None),  # methods are case-sensitive
        ("GET", "/public/x", None, True, "3", None),
        ("GET", "/internal", "frontend", False, "internal", PathReason.DENIED),
        ("GET", "/other", None, True, "default", None),
        ("GET", "/%61dmin", "frontend", False, "none", PathReason.UNSAFE_PATH),
        ("GET", "/public/../admin", None, False, "none", PathReason.UNSAFE_PATH),
    ],
)
def test_the_first_matching_rule_decides(
    identities: dict[str, PeerIdentity],
    method: str,
    target: str,
    who: str | None,
    admitted: bool,
    rule: str,
    reason: PathReason | None,
) -> None:
    identity = identities["intruder" if who == "unverified" else who] if who else None
    decision = compiled(RULES).decide(method, target, identity, who not in (None, "unverified"))
    assert (decision.admitted, decision.rule, decision.reason) == (admitted, rule, reason)
    assert decision.status == (200 if admitted else 400 if rule == "none" else 403)
    assert decision.detail


def test_the_default_decides_the_rest(identities: dict[str, PeerIdentity]) -> None:
    frontend = identities["frontend"]
    verified = PathPolicy(PathAuthorization(default=Requirement.VERIFIED))
    assert verified.active
    assert not verified.decide("GET", "/", None, False).admitted
    assert verified.decide("GET", "/", frontend, True).admitted
    deny = PathPolicy(PathAuthorization(default=Requirement.DENY))
    decision = deny.decide("GET", "/", frontend, True)
    assert (decision.admitted, decision.rule, decision.reason) == (False, "default", "denied")
    assert not PathAuthorization().active  # no rules, default any: nothing is checked


def test_allowed_by_names_the_allow_rule(identities: dict[str, PeerIdentity]) -> None:
    decision = compiled(RULES).decide("GET", "/admin", identities["frontend"], True)
    assert decision.allowed_by == AllowRule(AllowKind.SPIFFE_ID, FRONTEND)
    assert "allowed by spiffe_id" in decision.detail


def test_compiled_once_per_value() -> None:
    assert compiled(RULES) is compiled(PathAuthorization(rules=RULES.rules))


def test_a_bad_allow_pattern_is_a_value_error() -> None:
    bad = PathRule(
        PathMatch.PREFIX, "/", Requirement.VERIFIED, allow=(AllowRule(AllowKind.DNS, "a.*.b"),)
    )
    with pytest.raises(ValueError, match="wildcard"):
        PathPolicy(PathAuthorization(rules=(bad,)))


def test_audit_mode_decides_the_same_and_marks_refusals_unenforced(
    identities: dict[str, PeerIdentity],
) -> None:
    """``enforce: false`` changes no decision, only whether a refusal is enforced; an unsafe
    path stays enforced (it is refused for what it is, not for who sent it)."""
    audit = PathPolicy(PathAuthorization(default=Requirement.DENY, enforce=False))
    assert audit.active
    decision = audit.decide("GET", "/", identities["frontend"], True)
    assert (decision.admitted, decision.rule, decision.reason) == (False, "default", "denied")
    assert not decision.enforced and decision.status == 403
    unsafe = audit.decide("GET", "/%61dmin", identities["frontend"], True)
    assert unsafe.reason is PathReason.UNSAFE_PATH and unsafe.enforced
    enforced = PathPolicy(PathAuthorization(default=Requirement.DENY)).decide(
        "GET", "/", None, False
    )
    assert enforced.enforced
