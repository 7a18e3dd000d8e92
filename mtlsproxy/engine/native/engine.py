"""The native TLS 1.3 server engine: the ``Engine`` protocol on our own handshake.

Theory of operation
-------------------
The first bytes go through the same ``ClientHelloReader`` as the OpenSSL engine. Anything the
native engine does not serve is **handed over** to an :class:`OpenSSLEngine` built on the spot
and fed every byte buffered so far; every later call is delegated to it:

* a ClientHello the reader rejects (not TLS, plaintext HTTP, malformed, too old): OpenSSL's
  engine re-reads the same bytes and fails exactly as it always does (400 reply, alert, step
  and reason), so there is one implementation of that behaviour;
* a ClientHello without TLS 1.3 in supported_versions (a TLS 1.2 client; a route with
  ``min_version: "1.3"`` makes OpenSSL refuse it itself), or one offering TLS 1.2 too but no
  TLS 1.3 suite we have;
* a route without loaded credentials (``ServerRoute.credentials`` empty).

The hand-over clock reports the original accept time first, so phase timings stay honest.

For TLS 1.3 (RFC 8446) the engine runs a full handshake, never 0-RTT:
ClientHello -> [HelloRetryRequest -> ClientHello] -> ServerHello, (CCS), {EncryptedExtensions,
[CertificateRequest], Certificate, CertificateVerify, Finished} in one write; then the
client's [Certificate, CertificateVerify], Finished. The client's chain is verified by the
route's ``ClientVerifier`` (the same code the policy documents), its CertificateVerify
checked, the identity allow-list applied (``route.admit``), and only then its Finished checked
and ``HandshakeComplete`` emitted.

Resumption (sections 2.2, 4.2.11, 4.6.1): after a full handshake whose client was admitted
without ``would_refuse``, one NewSessionTicket goes out, sealed with the route's
:class:`~mtlsproxy.engine.native.tickets.TicketKey` (so a ticket resumes on its own route
only, and a reload rotates the keys). A ClientHello offering psk_dhe_ke and a ticket that
opens, is within its lifetime and fits the negotiated suite's hash is answered with
ServerHello (pre_shared_key, key_share: ECDHE is always done; psk_ke is not accepted),
{EncryptedExtensions, Finished}; a wrong binder is ``decrypt_error``, any other unusable ticket
is ignored (full handshake). The client's certificate from the ticket is checked again by
``route.admit(..., session_reused=True)`` (expiry, revocation, allow-list, against now) after
its Finished. A ClientHello that needs a HelloRetryRequest is always served a full handshake:
the PSK is ignored in both ClientHellos, which section 4.2.11 allows.

Deliberate differences from the OpenSSL engine (both are consequences of owning the
handshake, and both are covered by the differential tests):

* a client refused by the allow-list gets an encrypted ``access_denied`` alert (OpenSSL can only
  send close_notify under TLS 1.3);
* in audit mode (``client_auth.enforce: false``) a certificate that fails verification is
  admitted as ``would_refuse`` with ``verified`` false (OpenSSL fails the handshake);
* a handshake that stops after the client's Certificate reports ``client_verify`` or
  ``client_finished`` as the waiting step (OpenSSL cannot tell and says
  ``client_certificate``), and a failure after a certificate was presented says so
  (``client_certificate_presented``).

ALPN follows OpenSSL (through CPython's callback): server preference order, and a client whose
protocols all mismatch is served without ALPN (no ``no_application_protocol`` alert).

Secrets live in the ``KeySchedule`` and ``RecordProtection`` objects, whose reprs hide them;
nothing here logs, and exception details never carry key material.
"""

from __future__ import annotations

import contextlib
import enum
import hmac
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from cryptography import x509

from mtlsproxy.engine.clienthello import TLS1_2, ClientHello, ClientHelloReader, ExtensionType
from mtlsproxy.engine.clienthello import parse_client_hello as _parse_client_hello
from mtlsproxy.engine.events import (
    ApplicationData,
    ClientHelloReceived,
    Event,
    HandshakeComplete,
    HandshakeFailed,
    HandshakeTimings,
    PeerClosed,
    ProtocolError,
    Tracer,
    TraceRecord,
)
from mtlsproxy.engine.interface import Clock, RouteSelector, TLSRoute
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native import signatures as sigs
from mtlsproxy.engine.native.alerts import TLSAlert
from mtlsproxy.engine.native.key_schedule import (
    KeySchedule,
    Transcript,
    derive_secret,
    finished_verify_data,
    hkdf_expand_label,
)
from mtlsproxy.engine.native.record_layer import (
    MAX_PLAINTEXT_LENGTH,
    Record,
    RecordProtection,
    RecordReader,
    encode_record,
    pad_to_multiple,
)
from mtlsproxy.engine.native.suites import (
    CIPHER_SUITES,
    CipherSuite,
    CipherSuiteId,
    NamedGroup,
    generate_key_share,
    get_cipher_suite,
)
from mtlsproxy.engine.native.tickets import AGE_TOLERANCE, TICKET_LIFETIME, TicketState
from mtlsproxy.engine.openssl import CLIENT_REJECTS_SERVER_CERT, OpenSSLEngine
from mtlsproxy.engine.records import ContentType, HandshakeType
from mtlsproxy.vocabulary.decision import Decision, Evidence
from mtlsproxy.vocabulary.failures import Alert, HandshakeError, Reason, Step
from mtlsproxy.vocabulary.identity import PeerIdentity

if TYPE_CHECKING:
    from mtlsproxy.routing.routes import ServerCredential, ServerRoute

DEFAULT_CIPHER_SUITES = (
    CipherSuiteId.TLS_AES_128_GCM_SHA256,
    CipherSuiteId.TLS_AES_256_GCM_SHA384,
    CipherSuiteId.TLS_CHACHA20_POLY1305_SHA256,
)
DEFAULT_GROUPS = (NamedGroup.X25519, NamedGroup.SECP256R1, NamedGroup.SECP384R1)

# Section 4.2.10: a server that rejects 0-RTT skips the client's early data "up to the
# configured max_early_data_size"; we never accept any, so this only bounds the skipping.
MAX_SKIPPED_EARLY_DATA = 64 * 1024

RECORD_VERSION = 0x0303
PSK_DHE_KE = 1  # section 4.2.9; psk_ke (0) is never accepted
_WARNING, _FATAL = 1, 2


class _State(enum.Enum):
    CLIENT_HELLO = "client_hello"  # buffering until the ClientHello is whole
    RETRY = "retry"  # HelloRetryRequest sent; waiting for the second ClientHello
    CLIENT_FLIGHT = "client_flight"  # our flight sent; reading the client's
    ESTABLISHED = "established"  # admitted; application data flows
    CLOSED = "closed"  # failed, or the session ended
    DELEGATED = "delegated"  # handed over to the OpenSSL engine


class _Expect(enum.Enum):
    CERTIFICATE = "certificate"
    CERTIFICATE_VERIFY = "certificate_verify"
    FINISHED = "finished"


class _Refused(Exception):
    """The allow-list refused a client whose TLS handshake was otherwise acceptable."""

    def __init__(self, error: HandshakeError, identity: PeerIdentity | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.identity = identity


class _StartAt:
    """A clock whose first reading is ``start`` (the accept time of a handed-over engine)."""

    def __init__(self, start: float, clock: Clock) -> None:
        self._start: float | None = start
        self._clock = clock

    def __call__(self) -> float:
        if self._start is not None:
            start, self._start = self._start, None
            return start
        return self._clock()


class NativeEngine:
    """Server side of one TLS connection, TLS 1.3 natively, older versions through OpenSSL.

    ``select_route`` maps the parsed ClientHello to a route (a ``ServerRoute``: the engine uses
    its ``credentials``, ``verifier`` and ``config``); ``clock`` is a monotonic clock in seconds.
    ``cipher_suites`` and ``groups`` restrict and order what we negotiate (server preference
    for suites; the client's key_share order for groups).
    """

    def __init__(
        self,
        select_route: RouteSelector,
        clock: Clock,
        trace: Tracer | None = None,
        *,
        cipher_suites: Sequence[int] = DEFAULT_CIPHER_SUITES,
        groups: Sequence[int] = DEFAULT_GROUPS,
    ) -> None:
        self._select_route = select_route
        self._clock = clock
        self._trace = trace
        self._suites = tuple(CIPHER_SUITES[code] for code in cipher_suites)
        self._groups = tuple(NamedGroup(group) for group in groups)
        self._state = _State.CLIENT_HELLO
        self._delegate: OpenSSLEngine | None = None
        self._hello_reader = ClientHelloReader()
        self._hello: ClientHello | None = None
        # The routes a RouteTable selects are ServerRoutes: the native engine needs their
        # credentials and verifier, beyond the TLSRoute protocol OpenSSL needs.
        self._route: ServerRoute = cast("ServerRoute", None)
        self._records = RecordReader()
        self._handshake = msgs.HandshakeAssembler()
        self._out = bytearray()
        # Negotiated parameters and keys
        self._suite: CipherSuite | None = None
        self._transcript: Transcript | None = None
        self._schedule: KeySchedule | None = None
        self._hrr_group: int | None = None
        self._alpn: str | None = None
        self._read: RecordProtection | None = None
        self._write: RecordProtection | None = None
        self._ccs_seen = False
        self._decrypted_any = False
        self._early_data_budget = 0
        # The client's flight
        self._expect = _Expect.FINISHED
        self._leaf: x509.Certificate | None = None  # the client's, once its Certificate came
        self._leaf_der: bytes | None = None
        self._decision: Decision | None = None  # the policy's, once the client's chain came
        self._resumed: TicketState | None = None  # the ticket of a resumed session
        self._peer_closed = False
        self._close_sent = False
        # Phase marks, from self._clock().
        self._t_accept = clock()
        self._t_hello: float | None = None
        self._t_flight: float | None = None
        self._t_answer: float | None = None
        self._verify_seconds = 0.0  # our work on the client's flight, summed over calls
        self._busy_since: float | None = None  # start of the current receive() in that flight
        self._t_end: float | None = None

    def __repr__(self) -> str:
        return f"NativeEngine(state={self._state.value})"

    # Public surface (engine.interface.Engine)

    @property
    def handshake_complete(self) -> bool:
        if self._delegate is not None:
            return self._delegate.handshake_complete
        return self._state is _State.ESTABLISHED

    @property
    def route(self) -> TLSRoute | None:
        if self._delegate is not None:
            return self._delegate.route
        return self._route

    @property
    def delegated(self) -> bool:
        """True when the connection was handed over to the OpenSSL engine."""
        return self._delegate is not None

    @property
    def name(self) -> str:
        """The engine that runs this connection: ``native``, or ``openssl`` once handed over."""
        return "openssl" if self._delegate is not None else "native"

    def data_to_send(self) -> bytes:
        if self._delegate is not None:
            return self._delegate.data_to_send()  # nothing of ours is pending at hand-over
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive(self, data: bytes) -> list[Event]:
        if self._delegate is not None:
            return self._delegate.receive(data)
        if self._state is _State.CLOSED or self._peer_closed or not data:
            return []
        if self._state is _State.CLIENT_HELLO:
            return self._receive_client_hello(bytes(data))
        if self._state is _State.CLIENT_FLIGHT:
            started = self._clock()
            if self._t_answer is None:
                self._t_answer = started
            self._busy_since = started
        self._records.feed(data)
        events = self._process_records()
        if self._busy_since is not None:
            if self._state is _State.CLIENT_FLIGHT:  # still waiting: count this call's work
                self._verify_seconds += self._clock() - self._busy_since
            self._busy_since = None
        return events

    def receive_eof(self) -> list[Event]:
        if self._delegate is not None:
            return self._delegate.receive_eof()
        if self._state is _State.CLOSED or self._peer_closed:
            return []
        if self._state is _State.ESTABLISHED:
            self._peer_closed = True
            return [PeerClosed(clean=False)]
        error = HandshakeError(
            self._waiting_step(), Reason.PEER_CLOSED, "the client closed during the handshake"
        )
        return [self._fail(error)]

    def handle_timeout(self) -> list[Event]:
        if self._delegate is not None:
            return self._delegate.handle_timeout()
        if self._state not in (_State.CLIENT_HELLO, _State.RETRY, _State.CLIENT_FLIGHT):
            return []
        error = HandshakeError(
            self._waiting_step(), Reason.TIMEOUT, "the client did not finish the handshake in time"
        )
        return [self._fail(error)]

    def send(self, data: bytes) -> None:
        if self._delegate is not None:
            self._delegate.send(data)
            return
        if self._state is not _State.ESTABLISHED or self._close_sent:
            raise RuntimeError("send() before the handshake completed or after close")
        if not data:
            return
        assert self._write is not None
        view = memoryview(data)
        for start in range(0, len(view), MAX_PLAINTEXT_LENGTH):
            if self._write.needs_key_update:
                self._send_key_update(update_requested=False)
            chunk = bytes(view[start : start + MAX_PLAINTEXT_LENGTH])
            self._out += self._write.encrypt(ContentType.APPLICATION_DATA, chunk)

    def close(self) -> None:
        """Send close_notify. Reading goes on: the client may still have data in flight."""
        if self._delegate is not None:
            self._delegate.close()
            return
        if self._state is not _State.ESTABLISHED:
            self._state = _State.CLOSED
            return
        if self._close_sent:
            return
        self._close_sent = True
        self._send_alert(Alert.CLOSE_NOTIFY, level=_WARNING)

    def debug_traffic_secrets(self) -> dict[str, bytes]:
        """NSS key-log labels -> secrets, for tests comparing with a client's key log.

        Never call this outside tests and never log its result.
        """
        schedule = self._schedule
        if schedule is None or self._hello is None:
            return {}
        names = {
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET": "client_handshake_traffic_secret",
            "SERVER_HANDSHAKE_TRAFFIC_SECRET": "server_handshake_traffic_secret",
            "CLIENT_TRAFFIC_SECRET_0": "client_application_traffic_secret",
            "SERVER_TRAFFIC_SECRET_0": "server_application_traffic_secret",
            "EXPORTER_SECRET": "exporter_master_secret",
        }
        secrets: dict[str, bytes] = {}
        for label, attribute in names.items():
            try:
                secrets[label] = getattr(schedule, attribute)
            except RuntimeError:
                continue
        return secrets

    @property
    def client_random(self) -> bytes | None:
        return self._hello.random if self._hello is not None else None

    # Hand-over to OpenSSL

    def _hand_over(self) -> list[Event]:
        self._state = _State.DELEGATED
        self._note("--", "handed to the OpenSSL engine (no TLS 1.3 for us in this hello)")
        self._delegate = OpenSSLEngine(
            self._select_route, _StartAt(self._t_accept, self._clock), self._trace
        )
        return self._delegate.receive(self._hello_reader.buffered)

    # ClientHello and our flight

    def _receive_client_hello(self, data: bytes) -> list[Event]:
        try:
            hello = self._hello_reader.feed(data)
        except HandshakeError:
            return self._hand_over()
        if hello is None:
            return []
        if not hello.offers_tls13 or (
            TLS1_2 in hello.supported_versions
            and not any(suite.id in hello.cipher_suites for suite in self._suites)
        ):
            return self._hand_over()
        self._t_hello = self._clock()
        self._hello = hello
        if self._trace is not None:  # the fields cost a JA4: only when tracing
            self._note("<-", "ClientHello", **hello.trace_fields())
        route = self._select_route(hello)
        if not getattr(route, "credentials", ()):  # a TLSRoute without our credentials
            return self._hand_over()
        self._route = cast("ServerRoute", route)
        events: list[Event] = [ClientHelloReceived(hello, route.name)]
        try:
            try:
                self._early_data_budget = MAX_SKIPPED_EARLY_DATA if hello.has_early_data else 0
                self._answer_client_hello(hello, self._hello_reader.message, retry=False)
            except TLSAlert as alert:
                raise alert.to_handshake_error(Step.SERVER_HELLO) from None
        except HandshakeError as error:
            events.append(self._fail(error))
            return events
        except Exception as exc:  # a bug must never escape to the proxy's event loop
            events.append(self._fail(self._internal_error(exc)))
            return events
        rest = self._hello_reader.buffered[self._hello_reader.hello_size :]
        if rest:
            self._records.feed(rest)
            events += self._process_records()
        return events

    def _answer_client_hello(self, hello: ClientHello, message: bytes, *, retry: bool) -> None:
        """Negotiate; send a HelloRetryRequest or ServerHello and our whole flight."""
        if hello.compression_methods != b"\x00":
            raise TLSAlert(Alert.ILLEGAL_PARAMETER, "TLS 1.3 needs exactly null compression")
        suite = self._choose_suite(hello, retry)
        if not hello.signature_algorithms:
            raise TLSAlert(Alert.MISSING_EXTENSION, "ClientHello without signature_algorithms")
        chosen = sigs.choose_credential(self._route.credentials, hello.signature_algorithms)
        if chosen is None:
            raise HandshakeError(
                Step.SERVER_HELLO,
                Reason.NO_SHARED_SIGNATURE,
                "no signature scheme of the client fits our certificates",
                Alert.HANDSHAKE_FAILURE,
            )
        if msgs.extension_body(hello.extensions, ExtensionType.KEY_SHARE) is None or not (
            hello.supported_groups
        ):
            raise TLSAlert(
                Alert.MISSING_EXTENSION, "ClientHello without key_share/supported_groups"
            )
        shares = {entry.group: entry for entry in msgs.client_key_shares(hello.extensions)}
        if retry:
            if list(shares) != [self._hrr_group]:
                raise TLSAlert(
                    Alert.ILLEGAL_PARAMETER,
                    "the second ClientHello does not carry exactly the requested key share",
                )
            share = shares[self._hrr_group]
        else:
            self._suite = suite
            self._transcript = Transcript(suite)
            share = next((shares[g] for g in shares if g in self._groups), None)
            if share is None:
                group = next((g for g in hello.supported_groups if g in self._groups), None)
                if group is None:
                    raise HandshakeError(
                        Step.SERVER_HELLO,
                        Reason.NO_SHARED_CIPHER,
                        "no key exchange group in common with the client",
                        Alert.HANDSHAKE_FAILURE,
                    )
                self._send_retry_request(hello, message, suite, group)
                return
        assert self._transcript is not None
        self._alpn = self._choose_alpn(hello)
        # After a HelloRetryRequest the PSK is ignored: a full handshake (documented above).
        psk = None if retry else self._accept_psk(hello, message, suite)
        self._transcript.update(message)
        self._send_flight(hello, suite, share, *chosen, psk=psk)

    def _accept_psk(
        self, hello: ClientHello, message: bytes, suite: CipherSuite
    ) -> tuple[int, bytes] | None:
        """(selected_identity, PSK) of the first offered ticket we can resume, or None.

        Only tickets this route's key opens count; an expired one, or one for another hash,
        is skipped. The chosen ticket's binder must verify (``decrypt_error`` otherwise).
        """
        tickets = self._route.tickets
        if (
            tickets is None
            or not hello.has_pre_shared_key
            or PSK_DHE_KE not in hello.psk_key_exchange_modes
        ):
            return None
        body = msgs.extension_body(hello.extensions, ExtensionType.PRE_SHARED_KEY)
        if body is None:  # pragma: no cover - has_pre_shared_key says it is there
            return None
        offered = msgs.decode_offered_psks(body)
        now = tickets.now()
        for index, (identity, obfuscated_age) in enumerate(offered.identities):
            state = tickets.open(identity)
            if state is None:
                continue
            ticket_suite = get_cipher_suite(state.suite)
            if ticket_suite is None or ticket_suite.hash_name != suite.hash_name:
                continue
            client_age_ms = (obfuscated_age - state.age_add) % (1 << 32)
            if not 0 <= now - state.issued <= state.lifetime or (
                client_age_ms > (state.lifetime + AGE_TOLERANCE) * 1000
            ):
                continue
            truncated = message[: len(message) - offered.binders_size]
            self._check_binder(suite, state.psk, truncated, offered.binders[index])
            self._resumed = state
            self._leaf_der = state.leaf_der
            return index, state.psk
        return None

    @staticmethod
    def _check_binder(suite: CipherSuite, psk: bytes, truncated: bytes, binder: bytes) -> None:
        """Section 4.2.11.2: HMAC(finished_key(binder_key), Transcript-Hash(truncated CH))."""
        early_secret = KeySchedule(suite, psk=psk).early_secret
        binder_key = derive_secret(
            suite.hash_name, early_secret, b"res binder", suite.new_hash().digest()
        )
        digest = suite.new_hash()
        digest.update(truncated)
        expected = finished_verify_data(suite, binder_key, digest.digest())
        if not hmac.compare_digest(expected, binder):
            raise TLSAlert(Alert.DECRYPT_ERROR, "the PSK binder does not verify")

    def _choose_suite(self, hello: ClientHello, retry: bool) -> CipherSuite:
        if retry:
            assert self._suite is not None
            if self._suite.id not in hello.cipher_suites:
                raise TLSAlert(
                    Alert.ILLEGAL_PARAMETER,
                    "the second ClientHello dropped the cipher suite of the HelloRetryRequest",
                )
            return self._suite
        for suite in self._suites:
            if suite.id in hello.cipher_suites:
                return suite
        raise HandshakeError(
            Step.SERVER_HELLO,
            Reason.NO_SHARED_CIPHER,
            "no TLS 1.3 cipher suite in common with the client",
            Alert.HANDSHAKE_FAILURE,
        )

    def _choose_alpn(self, hello: ClientHello) -> str | None:
        if not hello.alpn_protocols:
            return None
        return next((p for p in self._route.alpn if p in hello.alpn_protocols), None)

    def _send_retry_request(
        self, hello: ClientHello, message: bytes, suite: CipherSuite, group: int
    ) -> None:
        assert self._transcript is not None
        self._hrr_group = group
        retry = msgs.hello_retry_request(hello.session_id, suite.id, group)
        self._transcript.update(message)
        self._transcript.replace_with_message_hash()
        self._transcript.update(retry)
        self._out += encode_record(ContentType.HANDSHAKE, retry)
        self._note("->", "HelloRetryRequest", cipher_suite=suite.name, group=f"0x{group:04x}")
        if hello.session_id:  # appendix D.4: CCS right after the first ServerHello or HRR
            self._out += encode_record(ContentType.CHANGE_CIPHER_SPEC, b"\x01")
        self._state = _State.RETRY

    def _send_flight(
        self,
        hello: ClientHello,
        suite: CipherSuite,
        client_share: msgs.KeyShareEntry,
        credential: ServerCredential,
        scheme: sigs.SignatureScheme,
        *,
        psk: tuple[int, bytes] | None = None,
    ) -> None:
        assert self._transcript is not None
        key_share = generate_key_share(client_share.group)
        shared_secret = key_share.exchange(client_share.key_exchange)
        hello_message = msgs.server_hello(
            os.urandom(32),
            hello.session_id,
            suite.id,
            client_share.group,
            key_share.public_bytes(),
            selected_identity=psk[0] if psk is not None else None,
        )
        schedule = KeySchedule(
            suite, psk=psk[1] if psk is not None else None, transcript=self._transcript
        )
        schedule.update_transcript(hello_message)
        schedule.derive_handshake_secrets(shared_secret)
        self._schedule = schedule
        padding = pad_to_multiple(self._route.record_padding)
        write = RecordProtection.from_secret(
            suite, schedule.server_handshake_traffic_secret, padding=padding
        )

        flight = [msgs.encrypted_extensions(self._alpn)]
        authorities: list[bytes] = []
        if self._route.requests_client_certificate and psk is None:
            authorities = list(self._route.client_ca_names)
            flight.append(msgs.certificate_request(sigs.SUPPORTED_SCHEMES, authorities))
            self._expect = _Expect.CERTIFICATE
        else:
            self._expect = _Expect.FINISHED
        chain_der = credential.chain_der
        if psk is None:  # a resumed session authenticates with the PSK (section 2.2)
            flight.append(msgs.certificate(chain_der))
        for message in flight:
            schedule.update_transcript(message)
        if psk is None:
            content = sigs.signed_content(schedule.transcript_hash(), server=True)
            verify = msgs.certificate_verify(scheme, sigs.sign(credential.key, scheme, content))
            schedule.update_transcript(verify)
            flight.append(verify)
        server_finished = msgs.finished(schedule.server_finished_verify_data())
        schedule.update_transcript(server_finished)
        schedule.derive_application_secrets()
        flight.append(server_finished)

        self._out += encode_record(ContentType.HANDSHAKE, hello_message)
        if self._trace is not None:
            self._note("->", "ServerHello", cipher_suite=suite.name,
                       group=f"0x{client_share.group:04x}", resumed=psk is not None)  # fmt: skip
            self._note("->", "EncryptedExtensions", alpn=self._alpn)
            if self._expect is _Expect.CERTIFICATE:
                self._note("->", "CertificateRequest", certificate_authorities=len(authorities))
            if psk is None:
                self._note("->", "Certificate", subject=credential.leaf.subject.rfc4514_string(),
                           chain_length=len(chain_der))  # fmt: skip
                self._note("->", "CertificateVerify", scheme=f"0x{scheme:04x}")
            self._note("->", "Finished")
        if hello.session_id and self._hrr_group is None:
            self._out += encode_record(ContentType.CHANGE_CIPHER_SPEC, b"\x01")
        self._out += write.encrypt_fragmented(ContentType.HANDSHAKE, b"".join(flight))
        self._write = RecordProtection.from_secret(
            suite, schedule.server_application_traffic_secret, padding=padding
        )
        self._read = RecordProtection.from_secret(suite, schedule.client_handshake_traffic_secret)
        self._state = _State.CLIENT_FLIGHT
        self._t_flight = self._clock()

    # Records

    def _process_records(self) -> list[Event]:
        """Drain the record reader; every record is handled before the next is read."""
        events: list[Event] = []
        app_data: list[bytes] = []
        try:
            while self._state in (_State.RETRY, _State.CLIENT_FLIGHT, _State.ESTABLISHED):
                if self._peer_closed:
                    break
                record = self._records.next_record()
                if record is None:
                    break
                if self._state is _State.ESTABLISHED:
                    events += self._established_record(record, app_data)
                else:
                    events += self._handshake_record(record)
        except _Refused as refused:
            events.append(self._refuse(refused))
        except TLSAlert as alert:
            if self._state is _State.ESTABLISHED:
                events.append(self._protocol_error(alert.alert, alert.detail))
            else:
                events.append(self._fail(alert.to_handshake_error(self._waiting_step())))
        except HandshakeError as error:
            events.append(self._fail(error))
        except Exception as exc:  # a bug must never escape to the proxy's event loop
            if self._state is _State.ESTABLISHED:
                events.append(self._protocol_error(Alert.INTERNAL_ERROR, type(exc).__name__))
            else:
                events.append(self._fail(self._internal_error(exc)))
        if app_data:
            data = app_data[0] if len(app_data) == 1 else b"".join(app_data)
            # Application data comes first: it was read before whatever ended the session.
            index = next(
                (i for i, e in enumerate(events) if not isinstance(e, HandshakeComplete)),
                len(events),
            )
            events.insert(index, ApplicationData(data))
        return events

    def _handshake_record(self, record: Record) -> list[Event]:
        content_type = record.content_type
        if content_type == ContentType.CHANGE_CIPHER_SPEC:
            # Section 5: one unencrypted CCS of value 0x01 is dropped before the client's
            # Finished; anything else is unexpected_message.
            if record.fragment != b"\x01" or self._ccs_seen:
                raise TLSAlert(Alert.UNEXPECTED_MESSAGE, "unexpected change_cipher_spec record")
            self._ccs_seen = True
            return []
        if content_type == ContentType.ALERT and not self._decrypted_any:
            # A client that could not process our ServerHello alerts in plaintext.
            return self._peer_alert(record.fragment)
        if self._state is _State.RETRY:
            if content_type == ContentType.HANDSHAKE:
                self._handshake.feed(record.fragment)
                return self._second_client_hello()
            if content_type == ContentType.APPLICATION_DATA:
                self._skip_early_data(record)
                return []
        elif content_type == ContentType.APPLICATION_DATA:
            assert self._read is not None
            try:
                inner = self._read.decrypt(record)
            except TLSAlert as alert:
                if alert.alert is Alert.BAD_RECORD_MAC and not self._decrypted_any:
                    self._skip_early_data(record)  # rejected 0-RTT data (section 4.2.10)
                    return []
                raise
            self._decrypted_any = True
            if inner.content_type == ContentType.ALERT:
                return self._peer_alert(inner.content)
            if inner.content_type != ContentType.HANDSHAKE:
                raise TLSAlert(Alert.UNEXPECTED_MESSAGE, "application data before the Finished")
            self._handshake.feed(inner.content)
            return self._client_flight_messages()
        raise TLSAlert(
            Alert.UNEXPECTED_MESSAGE, f"unexpected record of content type {content_type}"
        )

    def _skip_early_data(self, record: Record) -> None:
        if len(record.fragment) > self._early_data_budget:
            raise TLSAlert(
                Alert.BAD_RECORD_MAC
                if self._state is _State.CLIENT_FLIGHT
                else Alert.UNEXPECTED_MESSAGE,
                "a protected record that is not the client's handshake flight",
            )
        self._early_data_budget -= len(record.fragment)

    def _second_client_hello(self) -> list[Event]:
        message = self._handshake.next_message()
        if message is None:
            return []
        if message.msg_type != HandshakeType.CLIENT_HELLO or self._handshake.pending:
            raise TLSAlert(Alert.UNEXPECTED_MESSAGE, "expected the second ClientHello alone")
        assert self._hello is not None
        hello = _parse_client_hello(message.body)
        first = self._hello
        if (
            not hello.offers_tls13
            or hello.session_id != first.session_id
            or hello.server_name != first.server_name
            or hello.has_early_data
        ):
            raise TLSAlert(
                Alert.ILLEGAL_PARAMETER, "the second ClientHello does not match the first"
            )
        self._early_data_budget = 0
        try:
            self._answer_client_hello(hello, message.raw, retry=True)
        except TLSAlert as alert:
            raise alert.to_handshake_error(Step.SERVER_HELLO) from None
        return []

    # The client's flight

    def _client_flight_messages(self) -> list[Event]:
        events: list[Event] = []
        while self._state is _State.CLIENT_FLIGHT:
            message = self._handshake.next_message()
            if message is None:
                break
            expect = self._expect
            if expect is _Expect.CERTIFICATE and message.msg_type == HandshakeType.CERTIFICATE:
                self._client_certificate(message)
            elif (
                expect is _Expect.CERTIFICATE_VERIFY
                and message.msg_type == HandshakeType.CERTIFICATE_VERIFY
            ):
                self._client_certificate_verify(message)
            elif expect is _Expect.FINISHED and message.msg_type == HandshakeType.FINISHED:
                events.append(self._client_finished(message))
            else:
                raise TLSAlert(
                    Alert.UNEXPECTED_MESSAGE,
                    f"handshake message of type {message.msg_type} where the client's"
                    f" {expect.value} was expected",
                )
        return events

    def _client_certificate(self, message: msgs.Message) -> None:
        assert self._schedule is not None
        try:
            decoded = msgs.decode_certificate(message.body)
            if decoded.context:
                raise TLSAlert(Alert.ILLEGAL_PARAMETER, "non-empty certificate_request_context")
        except TLSAlert as alert:
            raise alert.to_handshake_error(Step.CLIENT_CERTIFICATE) from None
        self._schedule.update_transcript(message.raw)
        if not decoded.chain:
            self._decision = self._act_on(self._route.decide((), Evidence.UNCHECKED))
            self._expect = _Expect.FINISHED
            return
        try:
            self._leaf = x509.load_der_x509_certificate(decoded.chain[0])
        except ValueError:
            raise HandshakeError(
                Step.CLIENT_CERTIFICATE,
                Reason.MALFORMED,
                "the client's certificate does not parse",
                Alert.BAD_CERTIFICATE,
            ) from None
        self._leaf_der = decoded.chain[0]
        if self._trace is not None:
            self._note("<-", "Certificate", subject=self._leaf.subject.rfc4514_string(),
                       chain_length=len(decoded.chain))  # fmt: skip
        decision = self._route.decide(decoded.chain, Evidence.UNCHECKED)
        refusal = decision.refusal
        if not decision.admitted and refusal is not None and refusal.step is Step.CLIENT_VERIFY:
            raise refusal.to_error()
        # An allow-list refusal waits for the CertificateVerify: access_denied goes only to a
        # client that proved it holds the key of the certificate it is refused for.
        self._decision = decision
        self._expect = _Expect.CERTIFICATE_VERIFY

    def _client_certificate_verify(self, message: msgs.Message) -> None:
        assert self._schedule is not None
        try:
            scheme, signature = msgs.decode_certificate_verify(message.body)
            if scheme not in sigs.SUPPORTED_SCHEMES:
                raise TLSAlert(
                    Alert.ILLEGAL_PARAMETER, f"signature scheme 0x{scheme:04x} was not offered"
                )
            content = sigs.signed_content(self._schedule.transcript_hash(), server=False)
            assert self._leaf is not None  # a CertificateVerify follows a non-empty Certificate
            sigs.verify(self._leaf, scheme, signature, content)
        except TLSAlert as alert:
            reason = Reason.MALFORMED if alert.alert is Alert.DECODE_ERROR else None
            raise alert.to_handshake_error(
                Step.CLIENT_VERIFY, reason or Reason.CLIENT_CERT_INVALID
            ) from None
        self._schedule.update_transcript(message.raw)
        self._note("<-", "CertificateVerify", scheme=f"0x{scheme:04x}")
        assert self._decision is not None
        self._act_on(self._decision)
        self._expect = _Expect.FINISHED

    def _act_on(self, decision: Decision) -> Decision:
        """Go on with an admitted client; stop a refused one (seed step 6)."""
        refusal = decision.refusal
        if decision.admitted or refusal is None:
            return decision
        if refusal.step is Step.AUTHORIZE:
            raise _Refused(refusal.to_error(), decision.identity)
        raise refusal.to_error()

    def _client_finished(self, message: msgs.Message) -> HandshakeComplete:
        schedule = self._schedule
        assert schedule is not None and self._suite is not None
        try:
            verify_data = msgs.decode_finished(message.body, self._suite.hash_length)
            schedule.verify_client_finished(verify_data)
        except TLSAlert as alert:
            raise alert.to_handshake_error(Step.CLIENT_FINISHED) from None
        if self._handshake.pending:
            # Section 5.1: a message preceding a key change ends its record.
            raise HandshakeError(
                Step.CLIENT_FINISHED,
                Reason.MALFORMED,
                "bytes follow the client's Finished in its record",
                Alert.UNEXPECTED_MESSAGE,
            )
        schedule.update_transcript(message.raw)
        self._note("<-", "Finished")
        resumed = self._resumed is not None
        if resumed:
            # The ticket's certificate, checked again against now: expiry, revocation and the
            # allow-list (a refusal is access_denied, as in a full handshake).
            chain = (self._leaf_der,) if self._leaf_der is not None else ()
            decision = self._act_on(self._route.decide(chain, Evidence.RESUMED))
        elif self._decision is not None:
            decision = self._decision
        else:  # no CertificateRequest was sent
            decision = self._route.decide((), Evidence.UNCHECKED)
        self._read = RecordProtection.from_secret(
            self._suite, schedule.client_application_traffic_secret
        )
        self._state = _State.ESTABLISHED
        self._t_end = self._clock()
        leaf = self._leaf_der
        if decision.would_refuse is None:
            self._send_ticket(decision)
        return HandshakeComplete(
            route=self._route.name,
            version="TLSv1.3",
            cipher=self._suite.name,
            alpn=self._alpn,
            client_certificate_presented=leaf is not None,
            identity=decision.identity,
            session_reused=resumed,
            timings=self._timings(),
            client_certificate=leaf,
            verified=decision.verified,
            would_refuse=decision.would_refuse,
        )

    def _send_ticket(self, decision: Decision) -> None:
        """One NewSessionTicket (section 4.6.1), living no longer than the client's
        certificate; none when the state would not fit a ticket."""
        tickets = self._route.tickets
        schedule = self._schedule
        if tickets is None or schedule is None or self._write is None or self._suite is None:
            return
        now = tickets.now()
        lifetime = TICKET_LIFETIME
        if self._leaf_der is not None:
            if decision.identity is None:
                return
            lifetime = min(lifetime, int(decision.identity.not_after.timestamp()) - now)
        if lifetime <= 0:
            return
        suite = self._suite
        schedule.derive_resumption_master_secret()
        nonce = b"\x00"  # one ticket per connection: the nonce only has to be unique in it
        psk = hkdf_expand_label(
            suite.hash_name, schedule.resumption_master_secret, b"resumption", nonce,
            suite.hash_length,
        )  # fmt: skip
        age_add = int.from_bytes(os.urandom(4), "big")
        state = TicketState(
            psk, suite.id, now, lifetime, age_add, self._alpn, self._route.name, self._leaf_der
        )
        ticket = tickets.seal(state)
        if ticket is None:
            return
        message = msgs.new_session_ticket(lifetime, age_add, nonce, ticket)
        self._note("->", "NewSessionTicket", lifetime=lifetime)
        self._out += self._write.encrypt(ContentType.HANDSHAKE, message)

    # After the handshake

    def _established_record(self, record: Record, app_data: list[bytes]) -> list[Event]:
        assert self._read is not None
        inner = self._read.decrypt(record)
        if inner.content_type == ContentType.APPLICATION_DATA:
            if inner.content:
                app_data.append(inner.content)
            return []
        if inner.content_type == ContentType.ALERT:
            return self._peer_alert(inner.content)
        self._handshake.feed(inner.content)
        if self._handshake.next_type not in (None, HandshakeType.KEY_UPDATE):
            # Refused from its first byte: nothing else is buffered after the handshake.
            raise TLSAlert(
                Alert.UNEXPECTED_MESSAGE,
                f"post-handshake message of type {self._handshake.next_type}",
            )
        while (message := self._handshake.next_message()) is not None:
            if message.msg_type != HandshakeType.KEY_UPDATE:
                raise TLSAlert(
                    Alert.UNEXPECTED_MESSAGE,
                    f"post-handshake message of type {message.msg_type}",
                )
            update_requested = msgs.decode_key_update(message.body)
            self._note("<-", "KeyUpdate", update_requested=update_requested)
            if self._handshake.pending:
                raise TLSAlert(Alert.UNEXPECTED_MESSAGE, "bytes follow a KeyUpdate in its record")
            self._read = self._read.next_generation()
            if update_requested and not self._close_sent:
                self._send_key_update(update_requested=False)
        return []

    def _send_key_update(self, *, update_requested: bool) -> None:
        assert self._write is not None
        self._note("->", "KeyUpdate", update_requested=update_requested)
        self._out += self._write.encrypt(ContentType.HANDSHAKE, msgs.key_update(update_requested))
        self._write = self._write.next_generation()

    # Alerts

    def _peer_alert(self, content: bytes) -> list[Event]:
        if len(content) != 2:
            raise TLSAlert(Alert.DECODE_ERROR, f"alert of {len(content)} bytes")
        description = content[1]
        try:
            alert: Alert | None = Alert(description)
            name = alert.name.lower()
        except ValueError:
            alert, name = None, f"#{description}"
        self._note("<-", "alert", alert=name)
        if self._state is _State.ESTABLISHED:
            if alert is Alert.CLOSE_NOTIFY:
                self._peer_closed = True
                return [PeerClosed(clean=True)]
            if alert is Alert.USER_CANCELED:
                return []
            self._state = _State.CLOSED
            return [ProtocolError(f"the client sent alert {name}")]
        if alert is Alert.CLOSE_NOTIFY:
            error = HandshakeError(
                self._waiting_step(), Reason.PEER_CLOSED, "the client closed during the handshake"
            )
        elif self._t_flight is not None and alert in CLIENT_REJECTS_SERVER_CERT:
            error = HandshakeError(
                Step.SERVER_CERTIFICATE,
                Reason.CLIENT_REJECTED_SERVER_CERT,
                f"the client rejected our certificate with alert {name}",
            )
        else:
            reason = (
                Reason.UNSUPPORTED_VERSION
                if alert is Alert.PROTOCOL_VERSION
                else (Reason.CLIENT_ALERT)
            )
            error = HandshakeError(self._waiting_step(), reason, f"the client sent alert {name}")
        return [self._fail(error)]

    def _note(self, direction: str, message: str, **fields: object) -> None:
        if self._trace is not None:
            self._trace(TraceRecord(direction, message, fields))

    def _send_alert(self, alert: Alert, level: int = _FATAL) -> None:
        self._note("->", "alert", alert=alert.name.lower())
        content = bytes((level, alert))
        if self._write is not None:
            self._out += self._write.encrypt(ContentType.ALERT, content)
        else:
            self._out += encode_record(ContentType.ALERT, content, RECORD_VERSION)

    def _protocol_error(self, alert: Alert, detail: str) -> ProtocolError:
        self._state = _State.CLOSED
        if not self._close_sent:
            self._close_sent = True
            with contextlib.suppress(TLSAlert):
                self._send_alert(alert)
        return ProtocolError(f"{alert.name.lower()}: {detail}")

    # Failures

    def _internal_error(self, exc: Exception) -> HandshakeError:
        return HandshakeError(
            self._waiting_step(),
            Reason.INTERNAL_ERROR,
            f"internal error ({type(exc).__name__})",
            Alert.INTERNAL_ERROR,
        )

    def _waiting_step(self) -> Step:
        """The seed step we were waiting for when the handshake stopped."""
        if self._hello is None:
            return Step.CLIENT_HELLO
        if self._t_flight is None:
            return Step.SERVER_HELLO
        if self._expect is _Expect.CERTIFICATE:
            return Step.CLIENT_CERTIFICATE
        if self._expect is _Expect.CERTIFICATE_VERIFY:
            return Step.CLIENT_VERIFY
        return Step.CLIENT_FINISHED

    def _refuse(self, refused: _Refused) -> HandshakeFailed:
        """The allow-list refuses the client: an encrypted access_denied (seed step 6)."""
        error = refused.error
        alert = error.alert or Alert.ACCESS_DENIED
        error = HandshakeError(error.step, error.reason, error.detail, alert)
        return self._fail(error, identity=refused.identity, version="TLSv1.3")

    def _fail(
        self,
        error: HandshakeError,
        identity: PeerIdentity | None = None,
        version: str | None = None,
    ) -> HandshakeFailed:
        self._state = _State.CLOSED
        self._t_end = self._clock()
        self._records = RecordReader()  # nothing more is read: drop what is buffered
        self._handshake = msgs.HandshakeAssembler()
        if error.alert is not None:
            with contextlib.suppress(TLSAlert, ValueError):
                self._send_alert(error.alert)
        return HandshakeFailed(
            step=error.step,
            reason=error.reason,
            detail=error.detail,
            alert=error.alert,
            route=self._route.name if self._route is not None else None,
            timings=self._timings(),
            client_certificate_presented=self._leaf_der is not None,
            identity=identity,
            version=version,
        )

    def _timings(self) -> HandshakeTimings:
        verify = None
        if self._t_answer is not None:
            verify = self._verify_seconds
            if self._busy_since is not None and self._t_end is not None:
                verify += self._t_end - self._busy_since
        return HandshakeTimings.from_marks(
            self._t_accept, self._t_hello, self._t_flight, self._t_answer, self._t_end, verify
        )
