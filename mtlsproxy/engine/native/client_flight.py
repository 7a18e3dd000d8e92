"""The client's flight: its Certificate, CertificateVerify and Finished, and the decision.

Theory of operation
-------------------
Each function takes the state that expects a message and the message, and returns the next
state; the engine dispatches on the state's type and applies the result. A ``TLSAlert`` raised
here is turned into a ``HandshakeError`` by the engine at the state's own seed step, so these
functions only say *what* is wrong.

The policy is decided once, by the route (``route.decide``, i.e. ``policy.decision.decide``),
and acted on here; nothing in this module re-decides it:

* Certificate (RFC 8446 section 4.4.2): the chain goes to the policy as ``Evidence.UNCHECKED``
  (the policy verifies it). A verification refusal (seed step 5) stops the handshake at once;
  an allow-list refusal (seed step 6) waits for the CertificateVerify, so that
  ``access_denied`` goes only to a client that proved it holds the key of the certificate it is
  refused for. An empty Certificate is decided at once (mode ``require`` refuses it).
* CertificateVerify (section 4.4.3): the signature over the transcript with the leaf's key.
* Finished (section 4.4.4): checked last; a resumed session's client (its whole chain from the
  ticket) is decided again against now (``Evidence.RESUMED``: the chain verified with the CAs,
  CRLs and clock of now, and the allow-list).

In audit mode (``client_auth.enforce: false``) the decision admits a client it would refuse,
with ``would_refuse`` set; a certificate failing verification is admitted with ``verified``
false, where OpenSSL would fail the handshake (a deliberate difference, see the engine).
"""

from __future__ import annotations

from mtlsproxy.engine.events import HandshakeComplete, HandshakeTimings, Tracer, note
from mtlsproxy.engine.interface import NativeRoute
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native import route_cache
from mtlsproxy.engine.native import signatures as sigs
from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.states import (
    Established,
    ExpectCertificate,
    ExpectCertificateVerify,
    ExpectFinished,
)
from mtlsproxy.engine.records import Message
from mtlsproxy.vocabulary.decision import Decision, Evidence
from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Reason, Step
from mtlsproxy.vocabulary.identity import PeerIdentity


class Refused(Exception):
    """The allow-list refused a client whose TLS handshake was otherwise acceptable."""

    def __init__(self, error: HandshakeError, identity: PeerIdentity | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.identity = identity


class Unverified(Exception):
    """The client presented a certificate that fails verification (seed step 5), before its
    CertificateVerify: the handshake stops at once, and the failure says a certificate came."""

    def __init__(self, error: HandshakeError) -> None:
        super().__init__(str(error))
        self.error = error


def completed(
    route: str, established: Established, decision: Decision, timings: HandshakeTimings,
    *, resumed: bool,
) -> HandshakeComplete:  # fmt: skip
    """The event that says the client is admitted (seed steps 2-8 done)."""
    negotiated, leaf = established.negotiated, established.client_leaf_der
    return HandshakeComplete(
        route=route,
        version="TLSv1.3",
        cipher=negotiated.suite.name,
        alpn=negotiated.alpn,
        client_certificate_presented=leaf is not None,
        identity=decision.identity,
        session_reused=resumed,
        timings=timings,
        client_certificate=leaf,
        verified=decision.verified,
        would_refuse=decision.would_refuse,
        server_certificate=negotiated.server_certificate,
    )


def act_on(decision: Decision) -> Decision:
    """Go on with an admitted client; stop a refused one (seed steps 5 and 6)."""
    refusal = decision.refusal
    if refusal is None or decision.admitted:  # no refusal: admitted, without a property call
        return decision
    if refusal.step is Step.AUTHORIZE:
        raise Refused(refusal.to_error(), decision.identity)
    raise refusal.to_error()


def certificate(
    state: ExpectCertificate, message: Message, route: NativeRoute, trace: Tracer | None
) -> ExpectCertificateVerify | ExpectFinished:
    decoded = msgs.decode_certificate(message.body)
    if decoded.context:
        raise TLSAlert(Alert.ILLEGAL_PARAMETER, "non-empty certificate_request_context")
    negotiated = state.negotiated
    negotiated.schedule.update_transcript(message.raw)
    if not decoded.chain:
        decision = act_on(route.decide((), Evidence.UNCHECKED))
        return ExpectFinished(negotiated, decision=decision)
    try:
        leaf = route_cache.for_route(route).peer_certificate(decoded.chain[0])
    except ValueError:
        raise HandshakeError(
            Step.CLIENT_CERTIFICATE,
            Reason.MALFORMED,
            "the client's certificate does not parse",
            Alert.BAD_CERTIFICATE,
        ) from None
    if trace is not None:
        note(trace, "<-", "Certificate", subject=leaf.subject.rfc4514_string(),
             chain_length=len(decoded.chain))  # fmt: skip
    decision = route.decide(decoded.chain, Evidence.UNCHECKED)
    refusal = decision.refusal
    if refusal is not None and refusal.step is Step.CLIENT_VERIFY and not decision.admitted:
        raise Unverified(refusal.to_error())
    chain = decoded.chain
    return ExpectCertificateVerify(negotiated, leaf, chain[0], decision, chain)


def certificate_verify(
    state: ExpectCertificateVerify, message: Message, trace: Tracer | None
) -> ExpectFinished:
    schedule = state.negotiated.schedule
    try:
        scheme, signature = msgs.decode_certificate_verify(message.body)
        if scheme not in sigs.SUPPORTED_SCHEMES:
            raise TLSAlert(
                Alert.ILLEGAL_PARAMETER, f"signature scheme 0x{scheme:04x} was not offered"
            )
        content = sigs.signed_content(schedule.transcript_hash(), server=False)
        sigs.verify(state.leaf, scheme, signature, content)
    except TLSAlert as alert:
        # A signature that is there but wrong is the certificate failing, not bad framing.
        reason = Reason.MALFORMED if alert.alert is Alert.DECODE_ERROR else None
        raise alert.to_handshake_error(
            Step.CLIENT_VERIFY, reason or Reason.CLIENT_CERT_INVALID
        ) from None
    schedule.update_transcript(message.raw)
    if trace is not None:  # the field is formatted only for a trace
        note(trace, "<-", "CertificateVerify", scheme=f"0x{scheme:04x}")
    act_on(state.decision)
    return ExpectFinished(
        state.negotiated, state.client_leaf_der, state.decision,
        client_chain_der=state.client_chain_der,
    )  # fmt: skip


def finished(
    state: ExpectFinished,
    message: Message,
    route: NativeRoute,
    trace: Tracer | None,
    *,
    more_buffered: bool,
) -> tuple[Established, Decision]:
    """The client's Finished checked; the session and the decision it is admitted on.
    ``more_buffered``: handshake bytes follow the Finished in its record."""
    negotiated = state.negotiated
    schedule = negotiated.schedule
    verify_data = msgs.decode_finished(message.body, negotiated.suite.hash_length)
    schedule.verify_client_finished(verify_data)
    if more_buffered:
        # Section 5.1: a message preceding a key change ends its record.
        raise HandshakeError(
            Step.CLIENT_FINISHED,
            Reason.MALFORMED,
            "bytes follow the client's Finished in its record",
            Alert.UNEXPECTED_MESSAGE,
        )
    schedule.update_transcript(message.raw)
    if trace is not None:
        note(trace, "<-", "Finished")
    leaf_der, chain = state.client_leaf_der, state.client_chain_der
    if state.resumed is not None:
        # The ticket's whole chain, verified again against now: the CA bundle, CRLs and
        # clock of now, and the allow-list (a refusal is access_denied, as in a full handshake).
        chain = state.resumed.chain
        decision = act_on(route.decide(chain, Evidence.RESUMED))
    elif state.decision is not None:
        decision = state.decision
    else:  # no CertificateRequest was sent
        decision = route.decide((), Evidence.UNCHECKED)
    return Established(negotiated, leaf_der, chain, state.resumed), decision
