"""Per-path authorization of HTTP requests (``http_authorization``): which client may send which
request on a route whose requests the proxy reads (``forward_identity: http``).

The handshake decides who the client is (``policy.decision``); this decides, per request, what
that client may ask for. Under TLS 1.3 a client cannot be asked for a certificate after the
handshake, so a route with per-path rules runs ``client_auth.mode: request``: every client is
asked, one that sends no certificate is admitted anonymously, and the rules decide per request.

Rules are tried in order; the first whose methods and path match decides (``require``):
``any`` admits every client, anonymous included; ``verified`` admits a client that presented a
certificate that verified (in audit mode a client the handshake would refuse is not verified),
and if the rule has an ``allow`` list, only an identity on it (same syntax and semantics as
``client_auth.allow``, compiled by ``policy.authorize``); ``deny`` admits nobody. A request no
rule matches gets ``default`` (``any`` unless set).

Paths are compared as sent, never decoded, so a rule cannot be bypassed by an encoding the
upstream would decode: a request-target that is not in one unambiguous form is refused (400,
``unsafe_path``) before any rule is tried. ``check_target`` has the rules (Spring Security's
StrictHttpFirewall and Envoy's ``path_with_escaped_slashes_action: REJECT_REQUEST`` refuse the
same things). Methods are compared exactly (RFC 9110 section 9.1: case-sensitive); ``GET``
does not imply ``HEAD``. ``prefix`` is a string prefix, as in Envoy and nginx: ``/admin``
matches ``/admin``, ``/admin/users`` and ``/administrator`` (write ``/admin/`` and an ``exact``
``/admin`` to stop at the segment).

Audit mode (``enforce: false``), for rolling rules out the way ``client_auth.enforce: false``
rolls out the handshake policy: every decision is made as when enforcing, but a refusal is
marked not ``enforced``, and the request is forwarded, counted as would-refuse and logged.
An unsafe path stays enforced (400) in audit mode: it is refused for what the target is, not
for who sent it, so no rule is being rolled out there; a target the proxy cannot read one way
cannot be attributed to the rule it would meet either (the upstream may decode ``/%61dmin``
to ``/admin``), and letting it through would hide exactly the requests that aim past a rule.
Clients get the 400 they will get when enforcing, counted as refused (``unsafe_path``).

Sans-I/O and clock-free: ``PathPolicy.decide`` is called by ``forwarding`` for every request
head and narrated by ``mtlsproxy explain --path``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
from dataclasses import dataclass

from mtlsproxy.policy.authorize import AllowList
from mtlsproxy.policy.model import AllowRule
from mtlsproxy.vocabulary.identity import PeerIdentity


class Requirement(enum.StrEnum):
    """What a rule (or the default) asks of the client."""

    ANY = "any"  # every client, anonymous included
    VERIFIED = "verified"  # a verified certificate (on the rule's allow list, if it has one)
    DENY = "deny"  # nobody


class PathMatch(enum.StrEnum):
    PREFIX = "prefix"  # the path starts with the pattern (a string prefix)
    EXACT = "exact"  # the path is the pattern


class PathReason(enum.StrEnum):
    """Why a request was refused: the ``reason`` label of ``http_requests_refused_total``."""

    UNSAFE_PATH = "unsafe_path"  # 400: the target is not a normalized origin-form path
    NOT_VERIFIED = "not_verified"  # 403: the rule needs a verified certificate
    IDENTITY_NOT_ALLOWED = "identity_not_allowed"  # 403: verified, not on the rule's list
    DENIED = "denied"  # 403: the rule (or the default) is deny


DEFAULT_LABEL = "default"  # the rule label of a request no rule matched
NO_RULE_LABEL = "none"  # the rule label of a request refused before rules were tried
RESERVED_LABELS = (DEFAULT_LABEL, NO_RULE_LABEL)


@dataclass(frozen=True, slots=True)
class PathRule:
    """One rule. ``methods`` empty: any method. ``allow`` only with ``require: verified``."""

    match: PathMatch
    path: str
    require: Requirement
    methods: tuple[str, ...] = ()
    allow: tuple[AllowRule, ...] = ()
    name: str | None = None

    def describe(self) -> str:
        methods = f"{' '.join(self.methods)} " if self.methods else ""
        return f"{methods}{self.match} {self.path}"


@dataclass(frozen=True, slots=True)
class PathAuthorization:
    """A route's ``http_authorization``: no rules and default ``any`` is no authorization.
    ``enforce`` False: audit mode (module docstring); the rules are still checked."""

    rules: tuple[PathRule, ...] = ()
    default: Requirement = Requirement.ANY
    enforce: bool = True

    @property
    def active(self) -> bool:
        """Whether any request can be refused (and so requests are checked at all)."""
        return bool(self.rules) or self.default is not Requirement.ANY


def rule_label(index: int, rule: PathRule) -> str:
    """The metric label of a rule: its name, else its index in the list."""
    return rule.name if rule.name is not None else str(index)


# RFC 3986 pchar and "/", without ";" (path parameters: servlet containers strip ";..." from a
# segment before routing, so "/;x/admin" is "/admin" to them). Raw bytes outside it (a space,
# "\", a control character, non-ASCII) are not a normalized path either.
_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,=:@/]|%[0-9A-Fa-f]{2})*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Escapes a decoding upstream would read as something a rule compares: an unreserved character
# (RFC 3986 section 2.3 says URIs should not encode them; "/%61dmin" is "/admin" decoded), "/",
# "\", ";", "%" (double encoding), and control characters (%00 truncates in C).
_UNSAFE_ESCAPES = frozenset(
    [*range(0x20), 0x7F, *b"/\\;%-._~", *range(0x30, 0x3A), *range(0x41, 0x5B), *range(0x61, 0x7B)]
)


class UnsafePath(ValueError):
    """The request-target is refused before any rule is tried; the message says why."""


def check_target(target: str) -> str:
    """The path of ``target`` (the request-target as sent, latin-1), query removed, or
    ``UnsafePath``. Accepted: origin-form (``/`` first: not ``*``, ``http://host/...`` or
    ``host:port``); no ``#``; a path of RFC 3986 path characters without ``;``; no
    percent-encoded unreserved character, ``/``, ``\\``, ``;``, ``%`` or control character; no
    empty segment (``//``) except a trailing ``/``; no ``.`` or ``..`` segment. Nothing is
    rewritten: a client that sends such a path gets a 400."""
    if not target.startswith("/"):
        raise UnsafePath("the request-target is not in origin-form (a path starting with /)")
    path = target.partition("?")[0]
    if not _PATH.fullmatch(path):
        raise UnsafePath(
            "the path has a character outside RFC 3986 path characters, or ';', or a bad % escape"
        )
    for escape in _ESCAPE.finditer(path):
        if int(escape[1], 16) in _UNSAFE_ESCAPES:
            raise UnsafePath(f"the path encodes a character a decoding upstream reads: {escape[0]}")
    segments = path.split("/")[1:]
    if "" in segments[:-1]:
        raise UnsafePath("the path has an empty segment (//)")
    if "." in segments or ".." in segments:
        raise UnsafePath("the path has a . or .. segment")
    return path


@dataclass(frozen=True, slots=True)
class PathDecision:
    """The decision on one request. ``rule``: the deciding rule's label (``default`` when none
    matched, ``none`` when the target was refused first); ``matched``: that rule, if any;
    ``allowed_by``: the allow rule that admitted the identity. ``enforced``: a refusal is
    answered by the proxy; False in audit mode, where the request is forwarded (module
    docstring; never for an unsafe path)."""

    admitted: bool
    rule: str
    reason: PathReason | None = None
    detail: str = ""
    matched: PathRule | None = None
    allowed_by: AllowRule | None = None
    enforced: bool = True

    @property
    def status(self) -> int:
        """200 to forward; else the status the proxy answers with itself."""
        if self.admitted:
            return 200
        return 400 if self.reason is PathReason.UNSAFE_PATH else 403


class PathPolicy:
    """A route's ``http_authorization``, compiled once (``compiled``)."""

    __slots__ = ("_rules", "authorization")

    def __init__(self, authorization: PathAuthorization) -> None:
        """Raises ``ValueError`` for an allow pattern ``policy.authorize`` cannot compile."""
        self.authorization = authorization
        self._rules = tuple(
            (rule_label(index, rule), rule, AllowList(rule.allow))
            for index, rule in enumerate(authorization.rules)
        )

    @property
    def active(self) -> bool:
        return self.authorization.active

    def match(self, method: str, path: str) -> tuple[str, PathRule | None, AllowList | None]:
        """The first rule matching ``method`` and ``path`` (a checked path): its label, the rule
        and its allow list; (``default``, None, None) when none does."""
        for label, rule, allow in self._rules:
            if rule.methods and method not in rule.methods:
                continue
            if rule.path == path if rule.match is PathMatch.EXACT else path.startswith(rule.path):
                return label, rule, allow
        return DEFAULT_LABEL, None, None

    def decide(
        self, method: str, target: str, identity: PeerIdentity | None, verified: bool
    ) -> PathDecision:
        """The decision on ``method target`` (as sent; latin-1) from a client with ``identity``
        (None: anonymous), ``verified`` as the handshake decided it. Never raises. In audit
        mode a refusal by a rule or the default comes back not ``enforced``."""
        try:
            path = check_target(target)
        except UnsafePath as unsafe:
            return PathDecision(False, NO_RULE_LABEL, PathReason.UNSAFE_PATH, str(unsafe))
        decision = self._decide(method, path, identity, verified)
        if decision.admitted or self.authorization.enforce:
            return decision
        return dataclasses.replace(decision, enforced=False)

    def _decide(
        self, method: str, path: str, identity: PeerIdentity | None, verified: bool
    ) -> PathDecision:
        label, rule, allow = self.match(method, path)
        require = rule.require if rule is not None else self.authorization.default
        which = f"rule {label} ({rule.describe()})" if rule is not None else "the default"
        if require is Requirement.ANY:
            return PathDecision(True, label, matched=rule, detail=f"{which} admits any client")
        if require is Requirement.DENY:
            detail = f"{which} denies every client"
            return PathDecision(False, label, PathReason.DENIED, detail, rule)
        if identity is None or not verified:
            who = "an anonymous client" if identity is None else "an unverified client"
            detail = f"{which} requires a verified client certificate; {who} sent it"
            return PathDecision(False, label, PathReason.NOT_VERIFIED, detail, rule)
        if allow:
            allowed_by = allow.match(identity)
            if allowed_by is None:
                detail = f"{which}: {identity.describe()} is on none of its allow rules"
                return PathDecision(False, label, PathReason.IDENTITY_NOT_ALLOWED, detail, rule)
            detail = f"{which}: allowed by {allowed_by}"
            return PathDecision(True, label, None, detail, rule, allowed_by)
        return PathDecision(True, label, None, f"{which} admits any verified client", rule)


@functools.lru_cache(maxsize=256)
def compiled(authorization: PathAuthorization) -> PathPolicy:
    """The compiled policy of ``authorization``, once per distinct value (routes are rebuilt on
    reload; equal settings share one)."""
    return PathPolicy(authorization)
