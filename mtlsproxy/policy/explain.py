"""``mtlsproxy explain``: what the proxy would do with a client certificate on a route.

The account follows the seed's numbered handshake steps (DESIGN.md), runs the very code the
proxy runs (``ClientVerifier``, ``AllowList``), and never raises for bad input: an unreadable
certificate, a broken CA bundle or an invalid allow rule each become a line and a refusal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise

from cryptography import x509

from mtlsproxy.config.model import Route
from mtlsproxy.engine.errors import Reason, Step
from mtlsproxy.policy.authorize import AllowList
from mtlsproxy.policy.identity import PeerIdentity
from mtlsproxy.policy.model import ClientAuthMode
from mtlsproxy.policy.verify import CertificateRejected, ClientVerifier, VerifiedClient

_TIME = "%Y-%m-%d %H:%M:%S UTC"


@dataclass(slots=True)
class Explanation:
    """The verdict (``admitted``; else the ``step`` and ``reason`` the proxy would report) and
    the step-by-step account, one sentence per line, ending with the verdict line."""

    admitted: bool = False
    step: Step | None = None
    reason: Reason | None = None
    lines: list[str] = field(default_factory=list)

    def admit(self, how: str = "") -> Explanation:
        self.admitted = True
        self.lines.append(f"ADMITTED{how}")
        return self

    def refuse(self, step: Step, reason: Reason) -> Explanation:
        self.step, self.reason = step, reason
        self.lines.append(f"REFUSED at step {step} ({reason})")
        return self


def explain(route: Route, chain_pem: bytes, now: datetime) -> Explanation:
    """Explain the fate of the client presenting ``chain_pem`` (leaf first; empty bytes mean the
    client sends no certificate) on ``route`` at ``now``."""
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
    if not chain_pem.strip():
        out.lines.append("seed step 5: the client answers with an empty Certificate message")
        if auth.mode is ClientAuthMode.REQUEST:
            return out.admit(" (anonymous: client_auth.mode = request)")
        return out.refuse(Step.CLIENT_CERTIFICATE, Reason.CLIENT_CERT_MISSING)
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
    presented = PeerIdentity.from_certificate(chain[0])
    out.lines.append(
        f"seed step 5: the client presents {presented.describe()}, {len(chain)} certificate"
        + ("s" if len(chain) > 1 else "")
    )
    try:
        verifier = ClientVerifier.from_policy(auth)
        allow = AllowList(auth.allow)
    except ValueError as error:
        out.lines.append(f"configuration: {error}")
        return out.refuse(Step.CLIENT_VERIFY, Reason.INTERNAL_ERROR)
    try:
        verified = verifier.verify(chain, now)
    except CertificateRejected as rejected:
        out.lines.append(f"seed step 6: verification fails: {rejected.detail}")
        return out.refuse(Step.CLIENT_VERIFY, rejected.reason)
    out.lines += _verified_lines(verifier, verified, now)
    identity = verified.identity
    if not allow.rules:
        out.lines.append("authorize: no allow-list, every verified client is admitted")
    elif (rule := allow.match(identity)) is not None:
        out.lines.append(f"authorize: allowed by rule {rule}")
    else:
        out.lines.append(
            f"authorize: refused: no allow rule matches (identity: {_names(identity)})"
        )
        out.lines += [f"  rule {rule}" for rule in allow.rules]
        return out.refuse(Step.AUTHORIZE, Reason.IDENTITY_NOT_ALLOWED)
    out.lines.append(f"seed steps 7-9: Finished, then application data goes to {route.upstream}")
    return out.admit()


def _verified_lines(verifier: ClientVerifier, verified: VerifiedClient, now: datetime) -> list[str]:
    chain, identity = verified.chain, verified.identity
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
