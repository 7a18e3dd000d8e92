"""Our answer to a ClientHello: negotiation, HelloRetryRequest, or ServerHello and our flight.

Theory of operation
-------------------
:func:`answer` takes a parsed ClientHello (and, for a second one, the ``RetryRequested``
state) and returns what to send and the state that follows; it writes nothing itself and
touches no engine attribute, so the engine applies the result in one place.

Negotiation (RFC 8446 section 4.1.1), checked in this order so that the first problem is the
one reported: null compression only; a cipher suite (server preference); signature_algorithms
present and a credential of ours that fits them (``signatures.choose_credential``: ECDSA, then
Ed25519, then RSA-PSS); key_share and supported_groups present; a key share for one of our
groups in the client's order, else a HelloRetryRequest for the first group of theirs we have
(section 4.2.8). ALPN follows OpenSSL (through CPython's callback): server preference order,
and a client whose protocols all mismatch is served without ALPN (no
``no_application_protocol`` alert).

The flight (sections 4.1.3, 4.3, 4.4) goes out in one write: ServerHello, a CCS for middlebox
compatibility (appendix D.4) when the client sent a legacy_session_id and no HRR carried one
already, then {EncryptedExtensions, [CertificateRequest], Certificate, CertificateVerify,
Finished}. A resumed session (``resumption.accept_psk``) authenticates with the PSK: no
CertificateRequest, Certificate or CertificateVerify (section 2.2). After a HelloRetryRequest
the PSK is ignored (a full handshake), which section 4.2.11 allows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Final, NamedTuple

from mtlsproxy.engine.clienthello import (
    ClientHello,
    KeyShareEntry,
    parse_client_hello,
    retry_digest,
)
from mtlsproxy.engine.events import Tracer, note
from mtlsproxy.engine.interface import Credential, NativeRoute
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native import route_cache
from mtlsproxy.engine.native import signatures as sigs
from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.key_schedule import KeySchedule, Transcript
from mtlsproxy.engine.native.record_layer import RecordProtection, encode_record
from mtlsproxy.engine.native.resumption import Resumption, accept_psk
from mtlsproxy.engine.native.states import (
    ExpectCertificate,
    ExpectFinished,
    RetryRequested,
    new_negotiated,
)
from mtlsproxy.engine.native.suites import CipherSuite, NamedGroup, generate_key_share
from mtlsproxy.engine.records import HANDSHAKE, ContentType, HandshakeType, Message
from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Reason, Step

_CCS: Final = encode_record(ContentType.CHANGE_CIPHER_SPEC, b"\x01")


class Retry(NamedTuple):
    """A HelloRetryRequest to send (``records``), and the state waiting for the answer."""

    records: bytes
    state: RetryRequested


class Flight(NamedTuple):
    """Our flight to send (``records``), the protections that follow it (``read``: the
    client's handshake traffic; ``write``: our application traffic) and the state expecting
    the client's flight. (Named tuples: made once per handshake in one C call.)"""

    records: bytes
    read: RecordProtection
    write: RecordProtection
    state: ExpectCertificate | ExpectFinished


_new_flight: Callable[
    [tuple[bytes, RecordProtection, RecordProtection, ExpectCertificate | ExpectFinished]], Flight
] = partial(tuple.__new__, Flight)


def answer(
    hello: ClientHello,
    message: bytes,
    route: NativeRoute,
    suites: Sequence[CipherSuite],
    groups: Sequence[NamedGroup],
    *,
    now: Callable[[], int],
    retry: RetryRequested | None = None,
    trace: Tracer | None = None,
) -> Retry | Flight:
    """Negotiate for ``hello`` (``message``: its bytes, header included, for the transcript);
    ``retry``: the state of our HelloRetryRequest when this is the second ClientHello;
    ``now``: the wall clock in seconds, for an offered ticket's age.

    Raises ``TLSAlert`` for a hello we cannot accept and ``HandshakeError`` (at
    ``server_hello``) when nothing is in common with the client."""
    if hello.compression_methods != b"\x00":
        raise TLSAlert(Alert.ILLEGAL_PARAMETER, "TLS 1.3 needs exactly null compression")
    suite = _choose_suite(hello, suites, retry)
    if not hello.signature_algorithms:
        raise TLSAlert(Alert.MISSING_EXTENSION, "ClientHello without signature_algorithms")
    cache = route_cache.for_route(route)
    chosen = cache.choose(hello.signature_algorithms)
    if chosen is None:
        raise HandshakeError(
            Step.SERVER_HELLO,
            Reason.NO_SHARED_SIGNATURE,
            "no signature scheme of the client fits our certificates",
            Alert.HANDSHAKE_FAILURE,
        )
    if not hello.has_key_share or not hello.supported_groups:
        raise TLSAlert(Alert.MISSING_EXTENSION, "ClientHello without key_share/supported_groups")
    shares: dict[int, KeyShareEntry] = {}
    for entry in hello.key_shares:  # a loop, not a comprehension: one frame fewer
        shares[entry.group] = entry
    if len(shares) != len(hello.key_shares):
        # Section 4.2.8: "Clients MUST NOT offer multiple KeyShareEntry values for the same
        # group."
        raise TLSAlert(Alert.ILLEGAL_PARAMETER, "key_share offers one group twice")
    if retry is not None:
        if list(shares) != [retry.group]:
            raise TLSAlert(
                Alert.ILLEGAL_PARAMETER,
                "the second ClientHello does not carry exactly the requested key share",
            )
        share = shares[retry.group]
        transcript = retry.transcript
    else:
        transcript = Transcript(suite)
        found = None
        for group in shares:  # the client's order: a loop, where a generator is a frame
            if group in groups:
                found = shares[group]
                break
        if found is None:
            retry_group = next((g for g in hello.supported_groups if g in groups), None)
            if retry_group is None:
                raise HandshakeError(
                    Step.SERVER_HELLO,
                    Reason.NO_SHARED_CIPHER,
                    "no key exchange group in common with the client",
                    Alert.HANDSHAKE_FAILURE,
                )
            return _retry_request(hello, message, suite, retry_group, transcript, trace)
        share = found
    alpn = _choose_alpn(hello, route) if hello.alpn_protocols else None
    resumption = None
    if retry is None and hello.offered_psks is not None:  # the clock is read only for a PSK
        resumption = accept_psk(hello, message, suite, route, now())
    transcript.update(message)
    credential, scheme = chosen
    return _flight(
        hello, route, cache, suite, share, credential, scheme, transcript, alpn, resumption,
        after_retry=retry is not None, trace=trace,
    )  # fmt: skip


# What the error names when the second ClientHello changed a field it must repeat.
_RETRY_FIELDS: Final = (
    "legacy_version", "random", "session_id", "cipher_suites", "compression_methods",
    "server_name", "alpn_protocols", "signature_algorithms", "supported_groups",
    "supported_versions", "psk_key_exchange_modes",
)  # fmt: skip


def second_hello(state: RetryRequested, message: Message, *, alone: bool) -> ClientHello:
    """The ClientHello answering our HelloRetryRequest (section 4.1.2): alone in its record,
    and the same as the first but for the changes the section allows (``RETRY_MAY_CHANGE``:
    compared as a digest, so the first hello's extensions need not be kept), with no early
    data and no PSK the first did not offer. Anything else is ``illegal_parameter``."""
    if message.msg_type != HandshakeType.CLIENT_HELLO or not alone:
        raise TLSAlert(Alert.UNEXPECTED_MESSAGE, "expected the second ClientHello alone")
    hello = parse_client_hello(message.body)
    first = state.first
    if retry_digest(message.raw) != state.first_digest:
        changed = [name for name in _RETRY_FIELDS if getattr(hello, name) != getattr(first, name)]
        raise TLSAlert(
            Alert.ILLEGAL_PARAMETER,
            f"the second ClientHello changes {', '.join(changed) or 'an extension'}",
        )
    if hello.has_early_data:  # section 4.1.2: "Removing the "early_data" extension"
        raise TLSAlert(Alert.ILLEGAL_PARAMETER, "the second ClientHello offers early data")
    if hello.has_pre_shared_key and not first.has_pre_shared_key:
        raise TLSAlert(Alert.ILLEGAL_PARAMETER, "the second ClientHello adds a pre_shared_key")
    return hello


def _choose_suite(
    hello: ClientHello, suites: Sequence[CipherSuite], retry: RetryRequested | None
) -> CipherSuite:
    if retry is not None:
        if retry.suite.id not in hello.cipher_suites:
            raise TLSAlert(
                Alert.ILLEGAL_PARAMETER,
                "the second ClientHello dropped the cipher suite of the HelloRetryRequest",
            )
        return retry.suite
    for suite in suites:
        if suite.id in hello.cipher_suites:
            return suite
    raise HandshakeError(
        Step.SERVER_HELLO,
        Reason.NO_SHARED_CIPHER,
        "no TLS 1.3 cipher suite in common with the client",
        Alert.HANDSHAKE_FAILURE,
    )


def _choose_alpn(hello: ClientHello, route: NativeRoute) -> str | None:
    """Server preference among the protocols the client offers (it offers some)."""
    return next((p for p in route.alpn if p in hello.alpn_protocols), None)


def _retry_request(
    hello: ClientHello,
    message: bytes,
    suite: CipherSuite,
    group: int,
    transcript: Transcript,
    trace: Tracer | None,
) -> Retry:
    """Section 4.1.4: the transcript restarts from message_hash(ClientHello1)."""
    retry = msgs.hello_retry_request(hello.session_id, suite.id, group)
    transcript.update(message)
    transcript.replace_with_message_hash()
    transcript.update(retry)
    records = encode_record(ContentType.HANDSHAKE, retry)
    note(trace, "->", "HelloRetryRequest", cipher_suite=suite.name, group=f"0x{group:04x}")
    if hello.session_id:  # appendix D.4: CCS right after the first ServerHello or HRR
        records += _CCS
    first_digest = retry_digest(message)
    return Retry(records, RetryRequested(hello, suite, group, transcript, first_digest))


def _flight(
    hello: ClientHello,
    route: NativeRoute,
    cache: route_cache.RouteFlightCache,
    suite: CipherSuite,
    client_share: KeyShareEntry,
    credential: Credential,
    scheme: sigs.SignatureScheme,
    transcript: Transcript,
    alpn: str | None,
    resumption: Resumption | None,
    *,
    after_retry: bool,
    trace: Tracer | None,
) -> Flight:
    key_share = generate_key_share(client_share.group)
    shared_secret = key_share.exchange(client_share.key_exchange)
    hello_message = msgs.server_hello(
        os.urandom(32),
        hello.session_id,
        suite.id,
        client_share.group,
        key_share.public_bytes(),
        selected_identity=resumption.index if resumption is not None else None,
    )
    schedule = KeySchedule(
        suite,
        transcript=transcript,
        early_secret=resumption.early_secret if resumption is not None else None,
    )
    schedule.update_transcript(hello_message)
    schedule.derive_handshake_secrets(shared_secret)
    padding = cache.padding
    write = RecordProtection.from_secret(
        suite, schedule.server_handshake_traffic_secret, padding=padding
    )

    # The messages that depend on the route alone come encoded from its cache.
    flight = [cache.encrypted_extensions(alpn)]
    certificate_request = cache.certificate_request if resumption is None else None
    requests_certificate = certificate_request is not None
    if certificate_request is not None:
        flight.append(certificate_request)
    chain_der = credential.chain_der
    if resumption is None:  # a resumed session authenticates with the PSK (section 2.2)
        flight.append(cache.certificate_messages[id(credential)])
    schedule.update_transcript(b"".join(flight))  # the same hash as one update per message
    if resumption is None:
        content = sigs.signed_content(schedule.transcript_hash(), server=True)
        verify = msgs.certificate_verify(scheme, cache.signers[id(credential), scheme](content))
        schedule.update_transcript(verify)
        flight.append(verify)
    server_finished = msgs.finished(schedule.server_finished_verify_data())
    schedule.update_transcript(server_finished)
    schedule.derive_application_secrets()
    flight.append(server_finished)

    records = encode_record(HANDSHAKE, hello_message)
    if trace is not None:
        note(trace, "->", "ServerHello", cipher_suite=suite.name,
             group=f"0x{client_share.group:04x}", resumed=resumption is not None)  # fmt: skip
        note(trace, "->", "EncryptedExtensions", alpn=alpn)
        if requests_certificate:
            note(trace, "->", "CertificateRequest",
                 certificate_authorities=len(route.client_ca_names))  # fmt: skip
        if resumption is None:
            note(trace, "->", "Certificate", subject=credential.leaf.subject.rfc4514_string(),
                 chain_length=len(chain_der))  # fmt: skip
            note(trace, "->", "CertificateVerify", scheme=f"0x{scheme:04x}")
        note(trace, "->", "Finished")
    if hello.session_id and not after_retry:
        records += _CCS
    records += write.encrypt_fragmented(HANDSHAKE, b"".join(flight))

    negotiated = new_negotiated((suite, schedule, alpn, chain_der[0]))
    state: ExpectCertificate | ExpectFinished
    if requests_certificate:
        state = ExpectCertificate(negotiated)
    elif resumption is not None:
        state = ExpectFinished(negotiated, resumption.state.leaf_der, resumed=resumption.state)
    else:
        state = ExpectFinished(negotiated)
    read = RecordProtection.from_secret(suite, schedule.client_handshake_traffic_secret)
    write = RecordProtection.from_secret(
        suite, schedule.server_application_traffic_secret, padding=padding
    )
    return _new_flight((records, read, write, state))
