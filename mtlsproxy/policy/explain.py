"""``mtlsproxy explain``: what the proxy would do with a client certificate on a route.

It narrates the one decision the engines act on (``policy.decision.decide``), step by step in
the handshake's numbered steps (docs/handshake.md), and never raises for bad input: an
unreadable certificate, a broken CA bundle or an invalid allow rule each become a line and a
refusal. With a request (``--path``, ``--method``), ``explain_request`` goes on with the
route's ``http_authorization``: which rule decides for that client and request, and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mtlsproxy.policy.decision import ClientPolicy, decide
from mtlsproxy.policy.model import ClientAuth, ClientAuthMode
from mtlsproxy.policy.paths import PathAuthorization, PathReason, compiled
from mtlsproxy.policy.verify import ClientVerifier
from mtlsproxy.vocabulary.decision import Decision, Verdict
from mtlsproxy.vocabulary.failures import Reason, Step
from mtlsproxy.vocabulary.identity import PeerIdentity

_TIME = "%Y-%m-%d %H:%M:%S UTC"


class ExplainedRoute(Protocol):
    """What the account needs of a route (a ``config.model.Route`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def client_auth(self) -> ClientAuth: ...

    @property
    def upstream(self) -> object: ...


@dataclass(slots=True)
class Explanation:
    """The verdict (``admitted``, true in audit mode too; else the ``step`` and ``reason`` the
    proxy would report, which audit mode reports as ``would_refuse``) and the step-by-step
    account, one sentence per line, ending with the verdict line. ``identity`` and
    ``verified`` are what the upstream would be told (and what path rules see);
    ``request_reason`` is set when a request is refused (``explain_request``)."""

    admitted: bool = False
    verdict: Verdict | None = None
    step: Step | None = None
    reason: Reason | None = None
    lines: list[str] = field(default_factory=list)
    identity: PeerIdentity | None = None
    verified: bool = False
    request_reason: PathReason | None = None

    def admit(self, how: str = "") -> Explanation:
        self.admitted, self.verdict = True, Verdict.ADMITTED
        self.lines.append(f"ADMITTED{how}")
        return self

    def refuse(self, step: Step, reason: Reason) -> Explanation:
        self.verdict, self.step, self.reason = Verdict.REFUSED, step, reason
        self.lines.append(f"REFUSED at step {step} ({reason})")
        return self

    def refuse_request(self, status: int, rule: str, reason: PathReason) -> Explanation:
        self.admitted, self.verdict, self.request_reason = False, Verdict.REFUSED, reason
        phrase = "Bad Request" if status == 400 else "Forbidden"
        by = {"none": "before any rule", "default": "by the default"}.get(rule, f"by rule {rule}")
        self.lines.append(f"REFUSED with {status} {phrase} {by} ({reason})")
        return self

    def would_refuse_request(self, status: int, rule: str, reason: PathReason) -> Explanation:
        """Audit mode of the path rules: the request is forwarded; say what enforcing would do."""
        self.admitted, self.verdict, self.request_reason = True, Verdict.WOULD_REFUSE, reason
        phrase = "Bad Request" if status == 400 else "Forbidden"
        by = {"none": "before any rule", "default": "by the default"}.get(rule, f"by rule {rule}")
        self.lines.append(
            f"ADMITTED in audit mode (http_authorization.enforce: false): would refuse (audit "
            f"mode) with {status} {phrase} {by} ({reason}); the request is forwarded"
        )
        return self

    def would_refuse(self, step: Step, reason: Reason) -> Explanation:
        self.admitted, self.verdict = True, Verdict.WOULD_REFUSE
        self.step, self.reason = step, reason
        self.lines.append(
            f"ADMITTED in audit mode (client_auth.enforce: false) as would_refuse: enforcing "
            f"would refuse at step {step} ({reason}); the identity is forwarded as unverified"
        )
        return self


def explain(
    route: ExplainedRoute,
    chain_pem: bytes,
    now: datetime,
    *,
    verifies_in_handshake: bool = False,
) -> Explanation:
    """Explain the fate of the client presenting ``chain_pem`` (leaf first; empty bytes mean the
    client sends no certificate) on ``route`` at ``now``.

    ``verifies_in_handshake``: the route's engine is OpenSSL, which verifies the chain inside
    its handshake: a verification failure fails the handshake even in audit mode, and the
    account says that the chain check shown is mtlsproxy's, which a differential test keeps at
    least as strict as OpenSSL's."""
    out = Explanation()
    auth = route.client_auth
    if auth.mode is ClientAuthMode.NONE:
        out.lines += [
            f"seed step 2: route '{route.name}' sends no CertificateRequest "
            "(client_auth.mode = none)",
            "seed step 5: the client is never asked for a certificate",
        ]
        return out.admit(" (anonymous: client_auth.mode = none)")
    out.lines.append(
        f"seed step 2: route '{route.name}' sends a CertificateRequest "
        f"(client_auth.mode = {auth.mode})"
    )
    try:
        policy = ClientPolicy.compile(auth)
    except ValueError as error:
        out.lines.append(f"configuration: {error}")
        return out.refuse(Step.CLIENT_VERIFY, Reason.INTERNAL_ERROR)
    if not chain_pem.strip():
        out.lines.append("seed step 5: the client answers with an empty Certificate message")
        return _verdict(
            out, decide(policy, (), now), route, " (anonymous: client_auth.mode = request)"
        )
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as error:
        # cryptography's message is generic (and links its FAQ); say what is actually wrong.
        cause = (
            "no '-----BEGIN CERTIFICATE-----' block"
            if b"-----BEGIN CERTIFICATE-----" not in chain_pem
            else re.sub(r" See https://\S+ for more details\.", "", str(error))
        )
        out.lines.append(f"seed step 5: the input holds no parsable PEM certificate ({cause})")
        return out.refuse(Step.CLIENT_VERIFY, Reason.CLIENT_CERT_INVALID)
    out.lines.append(
        f"seed step 5: the client presents {_describe(chain[0])}, {len(chain)} certificate"
        + ("s" if len(chain) > 1 else "")
    )
    chain_der = tuple(cert.public_bytes(Encoding.DER) for cert in chain)
    decision = decide(policy, chain_der, now)
    refusal = decision.refusal
    if verifies_in_handshake:
        out.lines.append(
            "engine openssl: OpenSSL verifies the chain inside the handshake; the check below "
            "is mtlsproxy's verifier, never more permissive than OpenSSL's"
        )
    if refusal is not None and refusal.step is Step.CLIENT_VERIFY:
        out.lines.append(f"seed step 6: verification fails: {refusal.detail}")
        if verifies_in_handshake and decision.verdict is Verdict.WOULD_REFUSE:
            out.lines.append(
                "audit mode cannot admit it on engine openssl: the handshake fails (engine: "
                "native admits it as would_refuse)"
            )
            return out.refuse(refusal.step, refusal.reason)
        return _verdict(out, decision, route)
    assert policy.verifier is not None and decision.identity is not None
    out.lines += _verified_lines(policy.verifier, chain_der, decision.identity, now)
    if not policy.allow_list.rules:
        out.lines.append("authorize: no allow-list, every verified client is admitted")
    elif decision.rule is not None:
        out.lines.append(f"authorize: allowed by rule {decision.rule}")
    else:
        out.lines.append(
            f"authorize: refused: no allow rule matches (identity: {_names(decision.identity)})"
        )
        out.lines += [f"  rule {rule}" for rule in policy.allow_list.rules]
    return _verdict(out, decision, route)


def _verdict(
    out: Explanation, decision: Decision, route: ExplainedRoute, anonymous: str = ""
) -> Explanation:
    refusal = decision.refusal
    out.identity = decision.identity
    out.verified = refusal is None and decision.identity is not None
    if refusal is None:
        if decision.identity is None:
            return out.admit(anonymous)
        out.lines.append(
            f"seed steps 7-9: Finished, then application data goes to {route.upstream}"
        )
        return out.admit()
    if decision.verdict is Verdict.WOULD_REFUSE:
        return out.would_refuse(refusal.step, refusal.reason)
    return out.refuse(refusal.step, refusal.reason)


def explain_request(
    out: Explanation, authorization: PathAuthorization, method: str, target: str
) -> Explanation:
    """Go on from the handshake's account ``out``: what the route's ``http_authorization``
    does with ``method target`` (as the client would send it) from that client. The verdict
    line that ends it replaces the handshake's as the result."""
    out.lines.append(f"request: {method} {target}")
    if not out.admitted:
        out.lines.append("the request is never read: the handshake does not admit the client")
        return out
    if not authorization.active:
        out.lines.append("http_authorization: none on this route, every request is forwarded")
        return out.admit()
    who = (
        "anonymous"
        if out.identity is None
        else f"{out.identity.describe()}, {'verified' if out.verified else 'not verified'}"
    )
    out.lines.append(f"client: {who}")
    policy = compiled(authorization)
    decision = policy.decide(method, target, out.identity, out.verified)
    if decision.reason is PathReason.UNSAFE_PATH:
        out.lines.append(f"the request-target is refused before any rule: {decision.detail}")
        if not authorization.enforce:
            out.lines.append("an unsafe path is enforced in audit mode too (enforce: false)")
        return out.refuse_request(decision.status, decision.rule, decision.reason)
    rule = decision.matched
    if rule is None:
        out.lines.append(
            f"no rule matches; the default decides (http_authorization.default = "
            f"{authorization.default})"
        )
    else:
        out.lines.append(
            f"rule {decision.rule} decides: the first whose methods and path match "
            f"({rule.describe()})"
        )
    out.lines.append(decision.detail)
    if decision.reason is PathReason.IDENTITY_NOT_ALLOWED and rule is not None:
        out.lines += [f"  allow {allow}" for allow in rule.allow]
    if not decision.admitted:
        assert decision.reason is not None
        if not decision.enforced:
            return out.would_refuse_request(decision.status, decision.rule, decision.reason)
        return out.refuse_request(decision.status, decision.rule, decision.reason)
    return out.admit()


def _describe(cert: x509.Certificate) -> str:
    try:
        return PeerIdentity.from_certificate(cert).describe()
    except ValueError:
        return "(an unparsable certificate)"


def _verified_lines(
    verifier: ClientVerifier, chain_der: tuple[bytes, ...], identity: PeerIdentity, now: datetime
) -> list[str]:
    chain = verifier.verify_der(chain_der, now).chain  # the decision's, from the cache
    remaining = identity.not_after - now
    lines = [
        f"seed step 6: chain verifies to {chain[-1].subject.rfc4514_string()} "
        f"(path: {' <- '.join(c.subject.rfc4514_string() for c in chain)})",
        f"valid from {identity.not_before:{_TIME}} to {identity.not_after:{_TIME}} "
        f"(expires in {remaining.days} days)",
    ]
    if not verifier.crls:
        return [*lines, "revocation: no CRL configured"]
    for cert, issuer in pairwise(chain):
        who = "not revoked" if cert is chain[0] else f"{cert.subject.rfc4514_string()}: not revoked"
        # verify() refused paths with a certificate no CRL covers, or a stale CRL.
        for loaded in verifier.crls_for(cert, issuer):
            update = loaded.next_update
            when = f"{update:{_TIME}}" if update else "not set"
            lines.append(f"{who} (CRL {loaded.source.name}, next update {when})")
    return lines


def _names(identity: PeerIdentity) -> str:
    parts = [f"subject {identity.subject or '(empty)'}"]
    parts += [f"uri {u}" for u in identity.uris]
    parts += [f"dns {d}" for d in identity.dns_names]
    return ", ".join([*parts, f"sha256 {identity.sha256}"])
