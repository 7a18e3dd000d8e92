"""The one client-certificate decision (seed steps 5 and 6), made in one place.

``decide`` turns a route's compiled policy, the chain the client presented and the time into a
``Decision``. Both handshake engines act on it, ``mtlsproxy explain`` narrates it and a resumed
session runs it again, so the three can never disagree. It reads no clock and touches no
socket: ``now`` is passed in.

The order is fixed: no certificate (``client_certificate``), then verification
(``client_verify``: chain, validity, usage, key strength, name constraints, revocation), then
the allow-list (``authorize``). A resumed session (``Evidence.RESUMED``) is verified again in
full with the CA bundle, CRLs and clock of ``now`` (``ClientVerifier.verify_resumed``: the whole
chain when the engine passes it; a lone leaf issued by an intermediate by its own checks); a
CRL past its nextUpdate refuses it exactly as it refuses a full handshake.
``resumable_until`` says how long an admitted session may be resumed at most. The first
refusal is the one reported. Without ``enforce`` (audit mode) a refusal becomes
``would_refuse``: the client is admitted and its identity is forwarded as unverified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from mtlsproxy.policy.authorize import AllowList
from mtlsproxy.policy.model import ClientAuth, ClientAuthMode
from mtlsproxy.policy.verify import CertificateRejected, ClientVerifier
from mtlsproxy.vocabulary.decision import Decision, Evidence, Verdict
from mtlsproxy.vocabulary.failures import Alert, Reason, Refusal, Step
from mtlsproxy.vocabulary.identity import PeerIdentity


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """One route's ``client_auth``, compiled once: the CA bundle and CRLs loaded into a
    verifier (None when ``mode`` is ``none``), the allow rules compiled."""

    client_auth: ClientAuth
    verifier: ClientVerifier | None
    allow_list: AllowList

    @classmethod
    def compile(cls, client_auth: ClientAuth) -> ClientPolicy:
        """Raises ``ValueError`` naming the file when the CA bundle or CRL cannot be used."""
        verifier = (
            ClientVerifier.from_policy(client_auth)
            if client_auth.mode is not ClientAuthMode.NONE
            else None
        )
        return cls(client_auth, verifier, AllowList(client_auth.allow))

    @property
    def requests_certificate(self) -> bool:
        """Whether the server sends a CertificateRequest (seed step 2)."""
        return self.client_auth.mode is not ClientAuthMode.NONE

    @property
    def ca_names(self) -> tuple[bytes, ...]:
        """DER subjects of the client CAs (a CertificateRequest's certificate_authorities)."""
        return self.verifier.ca_names if self.verifier is not None else ()


# Enum members as module names: a member looked up on its class costs ~0.2 us on Python 3.11,
# and every handshake's decision reads a few.
_NONE, _REQUIRE = ClientAuthMode.NONE, ClientAuthMode.REQUIRE
_ADMITTED = Verdict.ADMITTED
_UNCHECKED, _RESUMED = Evidence.UNCHECKED, Evidence.RESUMED
# Every anonymous admission (mode none, or request without a certificate) is this one frozen
# decision: it names no client.
_ANONYMOUS = Decision(_ADMITTED)


def decide(
    policy: ClientPolicy,
    chain_der: Sequence[bytes],
    now: datetime | None,
    evidence: Evidence = Evidence.UNCHECKED,
) -> Decision:
    """The decision on a client that presented ``chain_der`` (leaf first; empty: no
    certificate) at ``now`` (None only with ``CHECKED_BY_OPENSSL``: nothing is then checked
    against a clock here). Never raises for anything a client can send: a certificate that
    cannot be parsed or used is refused as ``client_cert_invalid``."""
    auth = policy.client_auth
    if auth.mode is _NONE:
        return _ANONYMOUS
    if not chain_der:
        if auth.mode is _REQUIRE:
            missing = Refusal(
                Step.CLIENT_CERTIFICATE,
                Reason.CLIENT_CERT_MISSING,
                "the client sent no certificate and client_auth.mode is require",
                Alert.CERTIFICATE_REQUIRED,
            )
            return _refuse(auth, missing, None)
        return _ANONYMOUS
    identity, refusal = _verify(policy, chain_der, now, evidence)
    if refusal is not None:
        return _refuse(auth, refusal, identity)
    assert identity is not None
    allow_list = policy.allow_list
    if not allow_list.rules:
        return Decision(_ADMITTED, identity)
    position = allow_list.first(identity)
    if position is None:
        refusal = Refusal(
            Step.AUTHORIZE,
            Reason.IDENTITY_NOT_ALLOWED,
            f"{identity.describe()} matches no client_auth.allow rule",
            Alert.ACCESS_DENIED,
        )
        return _refuse(auth, refusal, identity)
    return Decision(_ADMITTED, identity, rule=allow_list.texts[position])


def _refuse(auth: ClientAuth, refusal: Refusal, identity: PeerIdentity | None) -> Decision:
    verdict = Verdict.REFUSED if auth.enforce else Verdict.WOULD_REFUSE
    return Decision(verdict, identity, refusal)


def _verify(
    policy: ClientPolicy, chain_der: Sequence[bytes], now: datetime | None, evidence: Evidence
) -> tuple[PeerIdentity | None, Refusal | None]:
    """Seed step 6 without the allow-list: the identity, and the refusal if any."""
    verifier = policy.verifier
    assert verifier is not None  # a policy that requests certificates has one
    try:
        if evidence is _UNCHECKED:
            assert now is not None
            return verifier.verify_der(chain_der, now).identity, None
        if evidence is _RESUMED:
            assert now is not None
            return verifier.verify_resumed(chain_der, now), None
    except CertificateRejected as rejected:
        detail = rejected.detail
        if evidence is _RESUMED:
            detail = f"resumed session: {detail}"
        refusal = Refusal(Step.CLIENT_VERIFY, rejected.reason, detail, rejected.alert)
        return _identity_or_none(chain_der[0]), refusal
    identity = verifier.identity_of(chain_der[0])  # CHECKED_BY_OPENSSL
    if identity is None:
        refusal = Refusal(
            Step.CLIENT_VERIFY,
            Reason.CLIENT_CERT_INVALID,
            "the client's certificate does not parse",
            Alert.BAD_CERTIFICATE,
        )
        return None, refusal
    return identity, None


def resumable_until(
    policy: ClientPolicy, chain_der: Sequence[bytes], now: datetime
) -> datetime | None:
    """The latest moment a session admitted with ``chain_der`` at ``now`` may be resumed: the
    earliest notAfter of its verified path and nextUpdate of the route's CRLs (after that, the
    full checks could say otherwise). None when the route verifies no certificate or the chain
    does not verify (no ticket should be issued then). Engines bound their session tickets by it.
    """
    verifier = policy.verifier
    if verifier is None or not chain_der:
        return None
    try:
        return verifier.valid_until(verifier.verify_der(chain_der, now).chain)
    except CertificateRejected:
        return None


def _identity_or_none(leaf_der: bytes) -> PeerIdentity | None:
    try:
        return PeerIdentity.from_der(leaf_der)
    except (ValueError, TypeError):
        return None
