"""The identity allow-list: which verified clients a route admits (seed step 6, ``authorize``).

Runs after the chain verified, on the leaf's ``PeerIdentity``. An empty list admits every
verified client; otherwise the first rule that matches admits, and no match refuses
(``identity_not_allowed``). Rule semantics:

``spiffe_id``
    Compared with the certificate's SPIFFE ID only (``PeerIdentity.spiffe_id``: the ID of an
    X.509-SVID, its only URI SAN, validated; a certificate with several URI SANs or an invalid
    ID has none, so it matches no ``spiffe_id`` rule), which is also the ID forwarded upstream.
    The pattern must be a SPIFFE ID (SPIFFE-ID specification section 2) in which path segments
    may hold ``*``: the scheme ``spiffe://`` in lowercase, a trust domain of ``a-z 0-9 . - _``
    (no wildcard), segments of ``A-Z a-z 0-9 . - _ *``, no empty, ``.`` or ``..`` segment, no
    percent-encoding, query, fragment, userinfo or port, optionally a final ``/**``. Anything
    else is a configuration error (``ValueError`` from ``compile_rule``). Wildcards as for
    ``uri``.
``uri``
    Compared with every URI SAN; a pattern with the ``spiffe`` scheme is compared with the
    SPIFFE ID only, as for ``spiffe_id``. Case-sensitive and whole-string. ``*`` matches any
    run of characters except ``/``, so it never crosses a path segment:
    ``spiffe://example.org/ns/*/sa/frontend`` matches ``.../ns/prod/sa/frontend`` but not
    ``.../ns/a/b/sa/frontend``; a segment made only of ``*`` never matches an empty segment
    (``.../ns/*/sa/frontend`` does not match ``.../ns//sa/frontend``). A pattern ending in
    ``/**`` matches the prefix followed by ``/`` and any non-empty suffix
    (``spiffe://example.org/ns/prod/**`` matches everything under ``ns/prod/``, not
    ``spiffe://example.org/ns/prod`` itself). ``**`` anywhere else is a configuration error.
``dns``
    Compared with every DNS SAN, case-insensitively, ignoring one trailing dot. A leading
    ``*.`` matches exactly one extra label (RFC 6125 section 6.4.3 style): ``*.example.org``
    matches ``a.example.org`` but neither ``example.org`` nor ``a.b.example.org``. No other
    ``*`` is allowed.
``subject_cn``
    Exactly equal (case-sensitive) to the first commonName of the subject.
``sha256``
    The SHA-256 fingerprint of the leaf DER; hex, with or without colons, any case.

Patterns are compiled once per route (``AllowList``), because matching runs per handshake.
``fnmatch`` is deliberately not used: its ``*`` crosses ``/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from mtlsproxy.policy.model import AllowKind, AllowRule
from mtlsproxy.vocabulary.identity import PeerIdentity

Predicate = Callable[[PeerIdentity], bool]

_DNS_LABEL = "[a-z0-9_-]+"  # one label of an LDH (or underscore) name, after lowercasing
_HEX64 = re.compile("[0-9a-f]{64}")


_SPIFFE_PATTERN = re.compile(r"spiffe://[a-z0-9._-]+((?:/[A-Za-z0-9._*-]+)*)(/\*\*)?")


def _uri_regex(pattern: str) -> re.Pattern[str]:
    head, deep = (pattern[:-3], True) if pattern.endswith("/**") else (pattern, False)
    if "**" in head:
        raise ValueError(f"{pattern!r}: '**' is only allowed as a final '/**'")
    return re.compile("/".join(map(_segment_regex, head.split("/"))) + ("/.+" if deep else ""))


def _segment_regex(segment: str) -> str:
    body = "[^/]*".join(re.escape(part) for part in segment.split("*"))
    # A wildcard segment is never empty: "ns/*/sa" must not match "ns//sa".
    return "(?=[^/])" + body if "*" in segment else body


def _check_spiffe_pattern(pattern: str) -> None:
    match = _SPIFFE_PATTERN.fullmatch(pattern)
    if match is None:
        raise ValueError(
            f"{pattern!r}: not a SPIFFE ID pattern (spiffe://trust.domain/path with a lowercase "
            "trust domain of a-z 0-9 . - _, path segments of A-Z a-z 0-9 . - _ and '*', no "
            "empty segment, percent-encoding, query, fragment, port or user, optionally a "
            "final '/**')"
        )
    if any(segment in (".", "..") for segment in match[1].split("/")):
        raise ValueError(f"{pattern!r}: a SPIFFE ID has no '.' or '..' path segment")


def _is_spiffe(pattern: str) -> bool:
    return pattern[:9].lower() == "spiffe://"


def _uri_predicate(pattern: str) -> Predicate:
    regex = _uri_regex(pattern)
    exact = "*" not in pattern  # the regex then matches the pattern alone: compared as is
    if _is_spiffe(pattern):
        if exact:
            return lambda identity: identity.spiffe_id == pattern
        return lambda identity: bool(identity.spiffe_id and regex.fullmatch(identity.spiffe_id))
    if exact:
        return lambda identity: pattern in identity.uris
    return lambda identity: any(regex.fullmatch(uri) for uri in identity.uris)


def _dns_normalize(name: str) -> str:
    return name.lower().removesuffix(".")


def _dns_predicate(pattern: str) -> Predicate:
    name = _dns_normalize(pattern)
    wildcard = name.startswith("*.")
    if "*" in (name[2:] if wildcard else name):
        raise ValueError(f"{pattern!r}: only a leading '*.' wildcard is allowed in dns")
    regex = re.compile((_DNS_LABEL + re.escape(name[1:])) if wildcard else re.escape(name))
    return lambda identity: any(regex.fullmatch(_dns_normalize(dns)) for dns in identity.dns_names)


def _sha256_predicate(pattern: str) -> Predicate:
    digest = pattern.replace(":", "").strip().lower()
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"{pattern!r}: sha256 must be 64 hex digits, colons allowed")
    return lambda identity: identity.sha256 == digest


def compile_rule(rule: AllowRule) -> Predicate:
    """The predicate of one rule; ``ValueError`` names the problem when the pattern is invalid
    (the config loader calls this to reject bad patterns at load)."""
    if rule.kind is AllowKind.SPIFFE_ID:
        if not rule.pattern.startswith("spiffe://"):
            raise ValueError(f"{rule.pattern!r}: a spiffe_id starts with spiffe://")
        _check_spiffe_pattern(rule.pattern)
        return _uri_predicate(rule.pattern)
    if rule.kind is AllowKind.URI:
        if _is_spiffe(rule.pattern):
            _check_spiffe_pattern(rule.pattern)
        return _uri_predicate(rule.pattern)
    if rule.kind is AllowKind.DNS:
        return _dns_predicate(rule.pattern)
    if rule.kind is AllowKind.SUBJECT_CN:
        cn = rule.pattern
        return lambda identity: identity.subject_cn == cn
    if rule.kind is AllowKind.SHA256:
        return _sha256_predicate(rule.pattern)
    raise ValueError(f"unknown allow rule kind {rule.kind!r}")


class AllowList:
    """The compiled allow-list of one route."""

    __slots__ = ("_tests", "rules", "texts")

    def __init__(self, rules: Sequence[AllowRule]) -> None:
        self.rules: tuple[AllowRule, ...] = tuple(rules)
        # Each rule's text, what a Decision names: formatted once, not per admitted client.
        self.texts: tuple[str, ...] = tuple(str(rule) for rule in self.rules)
        self._tests = [compile_rule(rule) for rule in self.rules]

    def __len__(self) -> int:
        """The number of rules, so that an empty list is falsy."""
        return len(self.rules)

    def first(self, identity: PeerIdentity) -> int | None:
        """The position (in ``rules`` and ``texts``) of the first rule that admits
        ``identity``, or None."""
        for position, test in enumerate(self._tests):
            if test(identity):
                return position
        return None

    def match(self, identity: PeerIdentity) -> AllowRule | None:
        """The first rule that admits ``identity``, or None."""
        position = self.first(identity)
        return None if position is None else self.rules[position]

    def admits(self, identity: PeerIdentity) -> bool:
        """The route's decision: an empty list admits every verified client."""
        return not self.rules or self.match(identity) is not None


def match_allow(identity: PeerIdentity, rules: Sequence[AllowRule]) -> AllowRule | None:
    """One-shot form of ``AllowList(rules).match(identity)``, for tools and tests."""
    return AllowList(rules).match(identity)
